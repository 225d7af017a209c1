"""Commands that reach a device or describe devices and recipes: bench, deploy, doctor, devices, recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import (
    AcceptKeyOption,
    DeviceOption,
    JsonOption,
    RuntimeOption,
    WideOption,
    app,
    check_runtime,
    emit,
    parse_threads,
    refuse,
    resolve_run_dir,
    user_errors,
)
from edgekit.errors import EdgekitError


@app.command()
@user_errors
def bench(
    ctx: typer.Context,
    models: Annotated[list[Path] | None, typer.Argument(help="Run directories, variant directories or .tflite "
                                                             "files; default: the latest run.")] = None,
    device: DeviceOption = "desktop",
    threads: Annotated[str | None, typer.Option(help="Thread counts to sweep, e.g. 1,2,4; default: the "
                                                     "profile's.")] = None,
    runs: Annotated[int, typer.Option(help="At least this many timed runs per row.")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 5,
    min_seconds: Annotated[float, typer.Option(help="And at least this long per row.")] = 2.0,
    delegate: Annotated[str | None, typer.Option(help="Also time with this delegate (edgetpu).")] = None,
    out: Annotated[Path | None, typer.Option(help="Results folder; default <run>/bench/<device>-<time>.")] = None,
    compare: Annotated[list[Path] | None, typer.Option(
        help="Compare two results.json files instead of benchmarking (pass twice).")] = None,
    runtime: RuntimeOption = None,
    images: Annotated[Path | None, typer.Option(help="A folder of images to time image classifiers that have "
                                                     "no edgekit manifest; without it such models get generated "
                                                     "inputs.")] = None,
    accuracy_samples: Annotated[int | None, typer.Option(
        help="Measure accuracy on the device over this many validation images (default: the whole split,"
                    " only when the device's runtime or delegate differs from the host's LiteRT).")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="Recommend the most accurate variant with p50 "
                                                              "at or under this.")] = None,
    min_accuracy: Annotated[float | None, typer.Option(help="Recommend the fastest variant with at least this "
                                                            "accuracy (0..1).")] = None,
    wide: WideOption = False,
    paired_rounds: Annotated[int, typer.Option(
        help="Interleaved rounds of each variant against the float32 one, to tell a real slowdown from the "
             "machine's drift (0: off).")] = 10,
    accept_new_host_key: AcceptKeyOption = False,
    as_json: JsonOption = False,
) -> None:
    """Accuracy, size and latency of every variant (or any .tflite) on a target: table, advice, Pareto plot.

    $ edgekit bench --device desktop --threads 1,2
    $ edgekit bench runs/digits-20260101-120000 --device pi --min-accuracy 0.95
    $ edgekit bench face_detector.tflite --device pi --runtime tflite_runtime
    $ edgekit bench --compare before/results.json after/results.json
    """
    from edgekit.bench.advice import advice_markdown
    from edgekit.bench.report import compare as compare_results
    from edgekit.bench.report import results_markdown
    from edgekit.bench.run import BenchSettings
    from edgekit.bench.session import bench_session
    from edgekit.render import TERMINAL_WIDTH

    if compare and len(compare) == 1 and models and len(models) == 1:  # `--compare A.json B.json`
        compare, models = [compare[0], models[0]], None
    if compare:
        if models:  # the positional form `--compare A B` was taken apart above; anything else is a model
            raise EdgekitError("MODELS: --compare reads two results.json files and measures nothing; drop one or "
                               "the other")
        refuse(ctx, ("device", "threads", "runs", "warmup", "min_seconds", "delegate", "out", "runtime",
                     "images", "accuracy_samples", "max_latency_ms", "min_accuracy", "accept_new_host_key",
                     "paired_rounds"),
               "--compare reads two results.json files and measures nothing; drop one or the other")
        if len(compare) != 2:
            raise EdgekitError("--compare takes exactly two results.json files (pass it twice)")
        rows, table = compare_results(compare[0], compare[1])
        emit({"rows": rows}, as_json, table)
        return
    check_runtime(runtime)
    settings = BenchSettings(threads=parse_threads(threads) if threads else (None,), runs=runs, warmup=warmup,
                             min_seconds=min_seconds, delegate=delegate, accept_new_host_key=accept_new_host_key,
                             runtime=runtime, images=images, accuracy_samples=accuracy_samples,
                             paired_rounds=paired_rounds)
    session = bench_session(list(models) if models else [resolve_run_dir(None)], device, settings, out=out,
                            max_latency_ms=max_latency_ms, min_accuracy=min_accuracy)
    result = session.result
    for row in result.rows:
        if row.status != "ok":
            typer.echo(f"warning: {row.variant} ({row.ran.delegate}, threads {row.ran.threads}): {row.error}",
                       err=True)
    emit({"device": session.device, "out_dir": str(session.out_dir), "partial": result.partial,
          "advice": session.advice, "rows": [row.as_dict() for row in result.rows]}, as_json,
         results_markdown(result.rows, None if wide else TERMINAL_WIDTH) + "\n" + advice_markdown(session.advice)
         + f"\nwritten to {session.out_dir}")
    if all(row.status == "error" for row in result.rows):
        raise typer.Exit(1)


@app.command()
@user_errors
def deploy(
    model: Annotated[Path | None, typer.Argument(help="A .tflite file or a variant directory.")] = None,
    device: DeviceOption = "desktop",
    runtime: RuntimeOption = None,
    service: Annotated[str | None, typer.Option(help="Also install and start a systemd service running the "
                                                     "runner's `serve` or `live` (restarts on failure and "
                                                     "at boot).")] = None,
    service_args: Annotated[str | None, typer.Option(help="Runner arguments for the service, e.g. '--host "
                                                          "0.0.0.0 --port 8080' or '/dev/video0 --fps 5'.")] = None,
    remove_service: Annotated[str | None, typer.Option(help="Stop, disable and delete the `serve` or `live` "
                                                            "service instead of deploying.")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="`--service serve` over HTTPS: a self-signed certificate made "
                                                    "on the device (openssl), its SHA-256 recorded for pinning; "
                                                    "needed to serve beyond 127.0.0.1.")] = False,
    accept_new_host_key: AcceptKeyOption = False,
    as_json: JsonOption = False,
) -> None:
    """Install a model (with its manifest and labels) and the runner on a device; sha256 checked there,
    and the runtime it will run with loads it there.

    $ edgekit deploy runs/digits-20260101-120000/compressed/int8-ptq --device pi
    $ edgekit deploy model.tflite --device coral-devboard --runtime tflite_runtime
    $ edgekit deploy runs/digits-20260101-120000/compressed/int8-ptq --device pi --service serve
    $ edgekit deploy runs/<run>/compressed/int8-ptq --device pi --service serve --tls --service-args '--host 0.0.0.0'
    $ edgekit deploy runs/<run>/compressed/int8-ptq --device pi --service live --service-args '/dev/video0 --fps 5'
    $ edgekit deploy --device pi --remove-service serve
    """
    from edgekit.deploy import deploy as deploy_model
    from edgekit.devices import load_profile
    from edgekit.service import ServiceSpec, remove_from_device

    check_runtime(runtime)
    if remove_service:
        result = remove_from_device(load_profile(device), remove_service, accept_new_host_key=accept_new_host_key)
        emit(result, as_json, f"removed {result['unit']} from {result['device']}")
        return
    if model is None:
        raise EdgekitError("deploy needs a MODEL (a .tflite file or a variant directory), or --remove-service")
    if service_args and not service:
        raise EdgekitError("--service-args needs --service serve or --service live")
    if tls and not service:
        raise EdgekitError("--tls needs --service serve (it is the served HTTP that TLS protects)")
    spec = ServiceSpec.parse(service, service_args, tls=tls) if service else None
    path = model / "model.tflite" if model.is_dir() else model
    result = deploy_model(load_profile(device), path, accept_new_host_key=accept_new_host_key,
                          runtime=runtime, service=spec)
    text = (f"deployed {path.name} (sha256 {result['model_sha256'][:12]}…) to {result['device']}: {result['model']}"
            f"\nrun it: {result['classify']}")
    if result.get("service"):
        unit = result["service"]
        text += (f"\nservice {unit['unit']}: {unit['state']} (token in {unit['env_file']}; logs: {unit['logs']}; "
                 f"remove: {unit['remove']})")
    if result.get("tls"):
        text += f"\nTLS certificate sha256 {result['tls']['sha256']} (pin it; recorded in {result['record']})"
    emit(result, as_json, text)


@app.command()
@user_errors
def doctor(
    device: DeviceOption = "desktop",
    fix: Annotated[bool, typer.Option("--fix", help="Install what is missing into the profile's `venv:` on the "
                                                    "device (pip, keeping the system's numpy), then check again.")
                   ] = False,
    accept_new_host_key: AcceptKeyOption = False,
    as_json: JsonOption = False,
    wide: WideOption = False,
) -> None:
    """What a device has (Python, numpy, interpreters, Edge TPU runtime, cores, memory) and what is missing.

    $ edgekit doctor --device pi
    $ edgekit doctor --device pi --fix
    """
    from edgekit.deploy import doctor as run_doctor
    from edgekit.devices import load_profile

    report = run_doctor(load_profile(device), accept_new_host_key=accept_new_host_key, fix=fix)
    emit(report, as_json, _doctor_text(report, wide))
    if not report.get("ok", True):
        raise typer.Exit(1)


def _doctor_text(report: dict, wide: bool) -> str:
    from edgekit.deploy import doctor_text
    from edgekit.render import TERMINAL_WIDTH

    return doctor_text(report, None if wide else TERMINAL_WIDTH)

devices_app = typer.Typer(no_args_is_help=False, invoke_without_command=True)
app.add_typer(devices_app, name="devices")
recipes_app = typer.Typer(no_args_is_help=False, invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")


@devices_app.callback()
@user_errors
def devices_group(ctx: typer.Context, as_json: JsonOption = False, wide: WideOption = False) -> None:
    """List device profiles: shipped ones and your own in $EDGEKIT_HOME/devices.

    $ edgekit devices
    $ edgekit devices show pi
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgekit.devices import list_profiles

    profiles = list_profiles()
    rows = [{"name": p.name, "aliases": list(p.aliases), "connection": p.connection, "address": p.address,
             "arch": p.arch, "runtime": p.runtime, "delegate": p.delegate, "source": p.source} for p in profiles]
    from edgekit.render import TERMINAL_WIDTH, markdown_table

    emit({"devices": rows}, as_json, markdown_table(
        ["name", "aliases", "connection", "address", "arch", "runtime", "delegate", "source"],
        [[r["name"], ", ".join(r["aliases"]) or "-", r["connection"], r["address"], r["arch"], r["runtime"],
          r["delegate"], r["source"]] for r in rows], None if wide else TERMINAL_WIDTH, drop=("source",)))


@devices_app.command("show")
@user_errors
def devices_show(name: Annotated[str, typer.Argument(help="Device name, alias or profile .yaml file.")]) -> None:
    """Print one device profile as YAML, with the file it comes from.

    $ edgekit devices show rpi4
    """
    from edgekit.devices import load_profile

    profile = load_profile(name)
    typer.echo(f"# {profile.source}\n{Path(profile.source).read_text()}")


@recipes_app.callback()
@user_errors
def recipes_group(ctx: typer.Context, as_json: JsonOption = False, wide: WideOption = False) -> None:
    """List compression recipes: shipped ones and your own in $EDGEKIT_HOME/recipes.

    $ edgekit recipes
    $ edgekit recipes show prune50-int8
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgekit.recipes import load_recipe, recipe_sources
    from edgekit.render import TERMINAL_WIDTH, markdown_table

    rows = []
    for name, source in recipe_sources().items():
        recipe = load_recipe(name)
        rows.append({"name": name, "stages": [s.type for s in recipe.stages], "description": recipe.description,
                     "source": source})
    emit({"recipes": rows}, as_json, markdown_table(
        ["name", "stages", "description", "source"],
        [[r["name"], " → ".join(r["stages"]), r["description"], r["source"]] for r in rows],
        None if wide else TERMINAL_WIDTH))


@recipes_app.command("show")
@user_errors
def recipes_show(name: Annotated[str, typer.Argument(help="Recipe name or .yaml file.")]) -> None:
    """Print one recipe as the YAML edgekit applies (validated).

    $ edgekit recipes show int8-qat
    """
    from edgekit.recipes import load_recipe

    recipe = load_recipe(name)
    typer.echo(f"# {recipe.source}\n{recipe.to_yaml()}")
