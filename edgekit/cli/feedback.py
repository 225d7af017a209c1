"""`edgekit feedback import|pull|export`: device logs back into training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import (
    AcceptKeyOption,
    DeviceOption,
    JsonOption,
    app,
    emit,
    user_errors,
)

feedback_app = typer.Typer(no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.callback()
def feedback_group() -> None:
    """Bring device logs (wrong predictions, corrections) back into training.

    $ edgekit feedback pull --device pi && edgekit feedback export --out feedback-data
    """


@feedback_app.command("import")
@user_errors
def feedback_import(
    db: Annotated[Path, typer.Argument(help="An edgekit_runner.db copied from a device.")],
    name: Annotated[str | None, typer.Option(help="Name of the import.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Snapshot a runner database and its saved samples into $EDGEKIT_HOME/feedback.

    $ edgekit feedback import ./edgekit_runner.db
    """
    from edgekit.feedback import import_db

    _report_imports([import_db(db, name=name)], "imported", as_json)


@feedback_app.command("pull")
@user_errors
def feedback_pull(
    device: DeviceOption,
    name: Annotated[str | None, typer.Option(help="Name of the import.")] = None,
    accept_new_host_key: AcceptKeyOption = False,
    max_size_mb: Annotated[int, typer.Option(help="Refuse a pull larger than this (the archive and what "
                                                         "it unpacks to).")] = 2048,
    as_json: JsonOption = False,
) -> None:
    """Fetch the runner database and samples from a device over SSH, then import them.

    $ edgekit feedback pull --device pi
    """
    from edgekit.config import Range
    from edgekit.devices import load_profile
    from edgekit.feedback import pull

    Range(1, 1 << 20, "MB").check(max_size_mb, "--max-size-mb")

    _report_imports(pull(load_profile(device), name=name, accept_new_host_key=accept_new_host_key,
                         max_bytes=max_size_mb * 2**20), "pulled", as_json)


def _report_imports(imports: list[Path], verb: str, as_json: bool) -> None:
    from edgekit.feedback import summarize

    counts = [summarize(target / "device.db") for target in imports]
    predictions, feedback = sum(c["predictions"] for c in counts), sum(c["feedback"] for c in counts)
    emit({"imports": [str(t) for t in imports], "predictions": predictions, "feedback": feedback}, as_json,
         f"{verb} {predictions} predictions and {feedback} corrections into {', '.join(map(str, imports))}")


@feedback_app.command("export")
@user_errors
def feedback_export(
    out: Annotated[Path, typer.Option(help="New folder for the class-folder dataset.")],
    imports: Annotated[list[Path] | None, typer.Argument(help="Imports to export; default: all.")] = None,
    select: Annotated[str | None, typer.Option(help="From the fleet store (`edgekit fleet pull`): low-confidence, "
                                                    "disagreement or corrected samples, hardest first.")] = None,
    store: Annotated[str | None, typer.Option(help="Fleet store to select from (default: "
                                                   "$EDGEKIT_HOME/fleet/store.db); implies --select corrected.")]
    = None,
    threshold: Annotated[float, typer.Option(help="--select low-confidence: top score below "
                                                                    "this (0.6).")] = 0.6,
    limit: Annotated[int | None, typer.Option(help="At most this many samples.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Write corrected samples as a class-folder dataset for `edgekit train --extra-data`.

    $ edgekit feedback export --out feedback-data && edgekit train --data photos --extra-data feedback-data
    $ edgekit feedback export --select low-confidence --limit 200 --out to-label
    """
    from edgekit.config import FRACTION, Range

    FRACTION.check(threshold, "--threshold")
    Range(1, 10_000_000, "samples").check(limit, "--limit")
    if select is not None or store is not None:
        from edgekit.errors import EdgekitError
        from edgekit.fleet.select import export_selected

        if imports:
            raise EdgekitError("--select/--store export from the fleet store; pass them or imports, not both")
        from edgekit.fleet.store import open_store

        with open_store(store) as opened:
            report = export_selected(opened, out, select or "corrected", threshold=threshold, limit=limit)
        emit(report, as_json, f"{report['written']} samples ({report['labelled']} labelled, {report['to_label']} to "
             f"label under {out}/.to-label) written to {out}; list: {out}/selection.csv")
        return
    from edgekit.feedback import export, report_markdown

    report = export(out, imports)
    emit(report, as_json, report_markdown(report) + f"\nwritten to {out}")
