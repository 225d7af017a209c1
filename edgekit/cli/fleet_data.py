"""`edgekit fleet pull|status`: field data from every device into one store, and how each model is doing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import JsonOption, emit, user_errors
from edgekit.cli.fleet import fleet_app

FleetArgument = Annotated[Path, typer.Argument(help="The fleet inventory (edgekit or Ansible YAML).")]
GroupOption = Annotated[str | None, typer.Option("--group", "-g", help="Only this group's devices (default: all).")]
StoreOption = Annotated[str | None, typer.Option(
    "--store", help="Field-data store: a path, sqlite:///PATH or postgresql://USER@HOST/DB "
                    "(default: $EDGEKIT_HOME/fleet/store.db).")]
ParallelOption = Annotated[int, typer.Option("--parallel", "-p",
                                             help="Devices read at once (8).")]


def _devices(fleet_file: Path, group: str | None):
    from edgekit.fleet.inventory import load_fleet

    fleet = load_fleet(fleet_file)
    return fleet, fleet.select(group)


@fleet_app.command("pull")
@user_errors
def fleet_pull(
    fleet_file: FleetArgument,
    group: GroupOption = None,
    store: StoreOption = None,
    parallel: ParallelOption = 8,
    as_json: JsonOption = False,
) -> None:
    """Bring every device's new predictions, corrections and samples into the store (only rows since the
    last pull move; one failed device never stops the others).

    $ edgekit fleet pull fleet.yaml --group line-2 --parallel 16
    """
    from dataclasses import asdict

    from edgekit.config import PARALLEL

    PARALLEL.check(parallel, "--parallel")

    from edgekit.fleet.pull import PULL_HEADERS, pull_fleet, summary_rows
    from edgekit.fleet.store import open_store
    from edgekit.render import markdown_table

    fleet, devices = _devices(fleet_file, group)
    with open_store(store) as opened:
        outcomes = pull_fleet(devices, opened, parallel=parallel)
    payload = {"fleet": fleet.name, "devices": [
        {"device": o.device, "ok": o.ok, "error": o.error, "seconds": o.seconds,
         **(asdict(o.value) if o.ok else {})} for o in outcomes]}
    failed = [o for o in outcomes if not o.ok]
    emit(payload, as_json, markdown_table(PULL_HEADERS, summary_rows(outcomes))
         + f"\n{len(outcomes) - len(failed)} of {len(outcomes)} devices pulled")
    if failed:
        raise typer.Exit(1)


@fleet_app.command("status")
@user_errors
def fleet_status(
    fleet_file: FleetArgument,
    group: GroupOption = None,
    store: StoreOption = None,
    parallel: ParallelOption = 8,
    window_hours: Annotated[float, typer.Option(help="Figures over the rows of the last N hours (24).")]
    = 24.0,
    out: Annotated[Path | None, typer.Option(help="Folder for status.png and status.json (default: "
                                                  "$EDGEKIT_HOME/fleet/<fleet>).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Pull new rows, then show per device: model, service, last seen, rate, confidence, corrections,
    p90 latency, disk, rollout wave and drift from the variant's validation reference; writes status.png.
    A device that cannot be pulled keeps its last figures, marked; status still exits 0 (it reports).

    $ edgekit fleet status fleet.yaml --group canary
    """
    from edgekit.artifacts import write_json_atomic
    from edgekit.config import PARALLEL, Range
    from edgekit.fleet.status import as_json as status_json
    from edgekit.fleet.status import fleet_status as run_status
    from edgekit.fleet.status import table
    from edgekit.fleet.store import open_store

    PARALLEL.check(parallel, "--parallel")
    Range(0, 24 * 366, "hours", integer=False, above=True).check(window_hours, "--window-hours")

    fleet, devices = _devices(fleet_file, group)
    with open_store(store) as opened:
        result = run_status(fleet, devices, opened, parallel=parallel, window_hours=window_hours, out_dir=out)
    payload = {"fleet": fleet.name, "png": str(result.png), "devices": [status_json(s) for s in result.devices]}
    write_json_atomic(result.png.with_name("status.json"), payload)
    emit(payload, as_json, table(result.devices) + f"\nplot: {result.png}")
