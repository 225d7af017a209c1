"""`edgekit data check`: duplicates, leaks, balance and label errors in a dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import (
    JsonOption,
    TrustModelOption,
    app,
    emit,
    user_errors,
)
from edgekit.errors import EdgekitError

data_app = typer.Typer(no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.callback()
def data_group() -> None:
    """Look at a dataset before training on it: duplicates, leakage, balance, label errors.

    $ edgekit data check photos/
    """


@data_app.command("check")
@user_errors
def data_check(
    folder: Annotated[Path, typer.Argument(help="Class folders, or train/ validation/ [test/] of class folders.")],
    run: Annotated[Path | None, typer.Option(help="A training run: also look for likely label errors.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Where the report and contact sheets go; default $EDGEKIT_HOME/datacheck/<folder>-<time>.")] = None,
    write_exclusions: Annotated[Path | None, typer.Option(
        help="Write the files to leave out, for `edgekit train --exclude FILE`.")] = None,
    near_distance: Annotated[int, typer.Option(help="Perceptual-hash bits (of 64) within which images are "
                                                     "near duplicates; 0 = exact copies only.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the k-fold split for label errors.")] = 42,
    trust_model: TrustModelOption = False,
    as_json: JsonOption = False,
) -> None:
    """Report duplicates, leaks between splits, class balance, odd images and likely label errors.

    Only reads the folder: the report (Markdown, JSON, contact sheets) goes to --out.

    $ edgekit data check photos/
    $ edgekit data check photos/ --run runs/photos-20260101-120000 --write-exclusions exclude.txt
    """
    from edgekit.artifacts import check_writable
    from edgekit.config import validate
    from edgekit.data.exclude import write_exclusions as write_list
    from edgekit.datacheck.check import CheckOptions, check_folder, default_out_dir, exclusion_entries, write_check
    from edgekit.datacheck.report import summary_lines

    options = CheckOptions(near_distance=near_distance, seed=seed)
    validate(options)
    out_dir = out or default_out_dir(folder)
    check_writable(out_dir)  # a read-only home fails now, not after minutes of scanning
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EdgekitError(f"{out_dir}: exists and is not empty; pass a new --out folder")
    report = check_folder(folder, run=run, options=options,
                          trust_model=trust_model)
    write_check(report, out_dir)
    lines = summary_lines(report) + [f"report: {out_dir / 'report.md'}"]
    excluded = None
    if write_exclusions is not None:
        excluded = write_list(write_exclusions, Path(report["data"]), exclusion_entries(report))
        lines.append(f"exclusions: {excluded} files listed in {write_exclusions} (use `edgekit train --exclude`)")
    payload = {"out_dir": str(out_dir), "summary": summary_lines(report), "n_images": report["n_images"],
               "unreadable": len(report["unreadable"]), "balance": report["balance"],
               "duplicates": {k: v for k, v in report["duplicates"].items() if k != "groups"},
               "leakage": report["leakage"], "flagged": len(report["flagged"]),
               "label_issues": len(report["label_errors"].get("issues", [])),
               "device_contradictions": len(report["label_errors"]["device"]["contradictions"]),
               "exclusions": {"file": str(write_exclusions), "count": excluded} if excluded is not None else None,
               "wall_time_s": report["wall_time_s"]}
    emit(payload, as_json, "\n".join(lines))
