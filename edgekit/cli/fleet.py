"""`edgekit fleet ...`: the single-device commands over a fleet file's group, and rollouts in waves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import AcceptKeyOption, JsonOption, app, emit, user_errors

fleet_app = typer.Typer(no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")

FleetArg = Annotated[Path, typer.Argument(help="The fleet file (edgekit YAML or an Ansible YAML inventory).")]
VariantArg = Annotated[Path, typer.Argument(help="A .tflite file or a variant directory.")]
GroupOption = Annotated[str | None, typer.Option("--group", "-g", help="Only this group's devices (default: all).")]
ParallelOption = Annotated[int, typer.Option(help="Devices worked on at once (1-256).")]


@fleet_app.callback()
def fleet_group() -> None:
    """Many devices at once: list, deploy, doctor, bench and roll out models over a fleet file's groups.

    $ edgekit fleet ls fleet.yaml
    $ edgekit fleet rollout runs/<run>/compressed/int8-ptq fleet.yaml --waves canary,all --shadow 30m
    """


def _finish(outcomes, directory: Path, as_json: bool, columns: list) -> None:
    from edgekit.fleet.ops import outcomes_json, summary_table

    emit({"devices": outcomes_json(outcomes), "record": str(directory)}, as_json,
         summary_table(outcomes, columns) + f"\nrecord: {directory / 'manifest.json'}")
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


@fleet_app.command("ls")
@user_errors
def fleet_ls(fleet_file: FleetArg, group: GroupOption = None, as_json: JsonOption = False) -> None:
    """The fleet's devices: name, groups, connection, address, work directory.

    $ edgekit fleet ls fleet.yaml --group canary
    """
    from edgekit.fleet.inventory import load_fleet

    fleet = load_fleet(fleet_file)
    devices = fleet.select(group)
    rows = [{"device": d.name, "groups": list(d.groups), "connection": d.profile.connection,
             "address": d.profile.address, "user": d.profile.user, "workdir": d.profile.remote_workdir,
             "arch": d.profile.arch, "runtime": d.profile.runtime, "service": d.vars.get("service")}
            for d in devices]
    from edgekit.render import fixed_line

    widths = (16, 20, 22)
    lines = [f"fleet {fleet.name}: {len(rows)} devices" + (f" in group {group}" if group else ""),
             fixed_line(["device", "groups", "address"], widths, "  ") + "  workdir"]
    for row in rows:
        workdir = row["workdir"] if len(row["workdir"]) <= 34 else "…" + row["workdir"][-33:]  # the end names it
        lines.append(fixed_line([row["device"], ",".join(row["groups"]), row["address"]], widths, "  ")
                     + f"  {workdir}")
    emit({"fleet": fleet.name, "source": str(fleet.source), "groups": {g: list(m) for g, m in fleet.groups.items()},
          "devices": rows}, as_json, "\n".join(lines))


@fleet_app.command("deploy")
@user_errors
def fleet_deploy(
    variant: VariantArg, fleet_file: FleetArg, group: GroupOption = None, parallel: ParallelOption = 8,
    service: Annotated[str | None, typer.Option(help="Also install and start the runner's `serve` or `live` "
                                                     "as a systemd service on every device.")] = None,
    service_args: Annotated[str | None, typer.Option(help="Runner arguments for the service, e.g. '--host "
                                                          "0.0.0.0 --port 8080'.")] = None,
    accept_new_host_key: AcceptKeyOption = False, as_json: JsonOption = False,
) -> None:
    """Deploy a model to every device of a group in parallel; it becomes each device's current model.

    $ edgekit fleet deploy runs/<run>/compressed/int8-ptq fleet.yaml --group line-2 --parallel 16
    $ edgekit fleet deploy runs/<run>/compressed/int8-ptq fleet.yaml --service live --service-args '/dev/video0'
    """
    from edgekit.config import PARALLEL
    from edgekit.errors import EdgekitError
    from edgekit.fleet.inventory import load_fleet
    from edgekit.fleet.ops import deploy_fleet
    from edgekit.service import ServiceSpec

    PARALLEL.check(parallel, "--parallel")

    if service_args and not service:
        raise EdgekitError("--service-args needs --service serve or --service live")
    spec = ServiceSpec.parse(service, service_args) if service else None
    fleet = load_fleet(fleet_file)
    outcomes, directory = deploy_fleet(fleet, fleet.select(group), variant, parallel=parallel,
                                       accept_new_host_key=accept_new_host_key, service=spec)
    _finish(outcomes, directory, as_json, [
        ("sha256", 12, lambda v: v["model_sha256"][:12]),
        ("runtime", 16, lambda v: f"{v['runtime']['name']} {v['runtime']['version']}")])


@fleet_app.command("doctor")
@user_errors
def fleet_doctor(fleet_file: FleetArg, group: GroupOption = None, parallel: ParallelOption = 8,
                 accept_new_host_key: AcceptKeyOption = False, as_json: JsonOption = False) -> None:
    """What every device of a group can run, and what is missing where.

    $ edgekit fleet doctor fleet.yaml
    """
    from edgekit.config import PARALLEL
    from edgekit.fleet.inventory import load_fleet
    from edgekit.fleet.ops import doctor_fleet

    PARALLEL.check(parallel, "--parallel")

    fleet = load_fleet(fleet_file)
    outcomes, directory = doctor_fleet(fleet, fleet.select(group), parallel=parallel,
                                       accept_new_host_key=accept_new_host_key)
    _finish(outcomes, directory, as_json, [("machine", 8, lambda v: v.get("machine")),
                                           ("python", 8, lambda v: v.get("python"))])


@fleet_app.command("bench")
@user_errors
def fleet_bench(variant: VariantArg, fleet_file: FleetArg, group: GroupOption = None, parallel: ParallelOption = 4,
                runs: Annotated[int, typer.Option(help="At least this many timed runs per device.")] = 50,
                min_seconds: Annotated[float, typer.Option(help="And at least this long per device.")] = 2.0,
                accept_new_host_key: AcceptKeyOption = False, as_json: JsonOption = False) -> None:
    """Latency of one model on every device of a group (the desktop's `bench`, per device, in parallel).

    $ edgekit fleet bench runs/<run>/compressed/int8-ptq fleet.yaml --group canary
    """
    from edgekit.bench.run import BenchSettings
    from edgekit.config import PARALLEL
    from edgekit.fleet.inventory import load_fleet
    from edgekit.fleet.ops import bench_fleet

    PARALLEL.check(parallel, "--parallel")

    settings = BenchSettings(runs=runs, min_seconds=min_seconds, accept_new_host_key=accept_new_host_key)
    settings.check()
    fleet = load_fleet(fleet_file)
    outcomes, directory = bench_fleet(fleet, fleet.select(group), variant, settings, parallel=parallel)

    def ms(figure):
        def cell(value):
            latency = value["rows"][0].latency_ms
            return None if latency is None else f"{figure(latency):.2f}"
        return cell

    _finish(outcomes, directory, as_json, [("p50 ms", 8, ms(lambda t: t.p50)), ("p90 ms", 8, ms(lambda t: t.p90))])


@fleet_app.command("rollout")
@user_errors
def fleet_rollout(
    variant: VariantArg,
    fleet_file: FleetArg,
    waves: Annotated[str, typer.Option(help="Groups in order, comma-separated; each wave takes its group's devices "
                                            "not in an earlier wave ('all': the rest).")] = "all",
    shadow: Annotated[str, typer.Option(help="How long the candidate runs in shadow per wave: 90s, 30m, 1h.")] = "30m",
    min_agreement: Annotated[float, typer.Option(help="Lowest top-1 agreement with the serving model.")] = 0.97,
    max_errors: Annotated[int, typer.Option(help="Most candidate failures tolerated per device.")] = 0,
    max_p90_ms: Annotated[float | None, typer.Option(help="Highest candidate p90 invoke latency per device.")] = None,
    min_samples: Annotated[int, typer.Option(help="Fewest shadow comparisons a device must have seen.")] = 1,
    settle: Annotated[str, typer.Option(help="After a promotion, how long the service must stay up.")] = "10s",
    group: GroupOption = None,
    parallel: ParallelOption = 8,
    resume: Annotated[bool, typer.Option("--resume", help="Continue this model's unfinished rollout on this "
                                                          "fleet (its saved settings win).")] = False,
    abort: Annotated[bool, typer.Option("--abort", help="With --resume: roll the wave in flight back and "
                                                        "stop.")] = False,
    rollout_id: Annotated[str | None, typer.Option("--id", help="With --resume: which rollout.")] = None,
    accept_new_host_key: AcceptKeyOption = False,
    as_json: JsonOption = False,
) -> None:
    """Roll a model out in waves: shadow beside the serving model, gate, promote or roll back.

    $ edgekit fleet rollout VARIANT fleet.yaml --waves canary,line-2,all --shadow 30m --min-agreement 0.97
    $ edgekit fleet rollout runs/<run>/compressed/int8-ptq fleet.yaml --resume
    """
    from edgekit.config import PARALLEL, validate
    from edgekit.errors import EdgekitError
    from edgekit.fleet import rollout as rollouts
    from edgekit.fleet.inventory import load_fleet
    from edgekit.fleet.ops import model_path
    from edgekit.fleet.rollout_manifest import summary_text

    PARALLEL.check(parallel, "--parallel")

    if abort and not resume:
        raise EdgekitError("--abort rolls back an interrupted rollout; use it with --resume")
    settings = None
    if not resume:  # every number checked before the fleet file or a device is touched
        settings = rollouts.RolloutSettings(
            waves=tuple(w.strip() for w in waves.split(",") if w.strip()), shadow_s=rollouts.parse_duration(shadow),
            min_agreement=min_agreement, max_errors=max_errors, max_p90_ms=max_p90_ms, min_samples=min_samples,
            settle_s=rollouts.parse_duration(settle, "--settle"))
        validate(settings)
    fleet = load_fleet(fleet_file)
    model = model_path(variant)
    options = {"accept_new_host_key": accept_new_host_key, "parallel": parallel}
    if resume:
        rollout = rollouts.resume(fleet, model, rollout_id, **options)
    else:
        rollout = rollouts.start(fleet, model, settings, group=group, **options)
    manifest = rollout.run(abort=abort)
    emit({**manifest, "manifest": str(rollout.path)}, as_json,
         summary_text(manifest) + f"\nmanifest: {rollout.path}")
    if manifest["state"] != "done":
        raise typer.Exit(1)
