"""The `edgekit` command: a thin typer layer that parses options and calls one library function each.

Results go to stdout (`--json` for machines), progress and warnings to stderr. A user mistake is an
`EdgekitError`: one line on stderr, exit code 1, no traceback unless `--debug`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgekit.errors import EdgekitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, compress, measure and deploy image classifiers for edge devices.",
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        from edgekit import __version__

        typer.echo(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the edgekit version and exit.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode images every time: no scan or pixel "
                                                              "cache under $EDGEKIT_HOME/cache (EDGEKIT_CACHE=off).")]
    = False,
    cache_limit: Annotated[str | None, typer.Option(help="Largest size of the pixel cache, e.g. 20G (default; "
                                                         "EDGEKIT_CACHE_LIMIT); least recently used entries go.")]
    = None,
) -> None:
    """edgekit: train → compress → bench → deploy → feedback, one artifact directory at a time.

    $ edgekit --no-cache eval runs/photos-20260101-120000
    $ edgekit --cache-limit 50G train --data photos/
    """
    _state["debug"] = debug
    if no_cache:  # the environment carries it to the library, subprocesses and tests alike
        os.environ["EDGEKIT_CACHE"] = "off"
    if cache_limit is not None:
        from edgekit.datacache import parse_size

        try:
            parse_size(cache_limit, "--cache-limit")
        except EdgekitError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        os.environ["EDGEKIT_CACHE_LIMIT"] = cache_limit
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s: %(message)s", force=True)
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def user_errors(func):
    """Turn EdgekitError into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EdgekitError as exc:
            if _state["debug"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def emit(payload: dict, as_json: bool, human: str) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else human)


JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


# ---------------------------------------------------------------- train


@app.command()
@user_errors
def train(
    data: Annotated[str | None, typer.Option(help="Image folder (one sub-folder per class, or train/ "
                                                     "validation/ [test/]); default: the embedded digits.")] = None,
    extra_data: Annotated[list[str] | None, typer.Option(
        help="Extra class folders folded into training (e.g. from `edgekit feedback export`).")] = None,
    exclude: Annotated[Path | None, typer.Option(
        help="Leave out the files this list names (from `edgekit data check --write-exclusions`).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input size; default 32 (digits) or 96.")] = None,
    alpha: Annotated[float, typer.Option(help="MobileNetV2 width multiplier.")] = 0.35,
    weights: Annotated[str | None, typer.Option(
        help="imagenet | none | PATH to no-top .h5 weights; default none for digits, imagenet for --data.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (head epochs when transfer learning).")] = 30,
    fine_tune_epochs: Annotated[int, typer.Option(help="Extra epochs fine-tuning the top of the body.")] = 0,
    fine_tune_at: Annotated[int, typer.Option(help="Body layer index from which fine-tuning unfreezes.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 64,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 2e-3,
    fine_tune_learning_rate: Annotated[float, typer.Option(help="Learning rate while fine-tuning.")] = 1e-4,
    validation_fraction: Annotated[float, typer.Option(help="Held out when there is no validation folder.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for splits, shuffling, augmentation and initialisation.")] = 42,
    augment: Annotated[bool, typer.Option(help="Augment training batches.")] = True,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips (always off for digits).")] = True,
    rotation: Annotated[float, typer.Option(help="Random rotation, fraction of a full turn (0 = off).")] = 0.05,
    zoom: Annotated[float, typer.Option(help="Random zoom fraction (0 = off).")] = 0.1,
    translation: Annotated[float, typer.Option(help="Random translation fraction (0 = off).")] = 0.1,
    contrast: Annotated[float, typer.Option(help="Random contrast factor (0 = off).")] = 0.1,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs.")] = 8,
    strategy: Annotated[str, typer.Option(help="auto | default | mirrored | multiworker (TF_CONFIG).")] = "auto",
    mixed_precision: Annotated[str, typer.Option(help="auto (on with a GPU) | on | off.")] = "auto",
    strict: Annotated[bool, typer.Option(help="Stop at the first unreadable image instead of skipping it.")] = False,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Cap steps per epoch (smoke tests).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name; default <dataset>-<timestamp>.")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Where runs go; default $EDGEKIT_HOME/runs.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run directory.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Train a MobileNetV2 classifier; with no options, on the embedded digits, offline.

    $ edgekit train
    $ edgekit train --data photos/ --image-size 96 --fine-tune-epochs 5
    $ edgekit train --data photos/ --exclude photos-exclusions.txt
    """
    from edgekit.config import AugmentConfig, TrainConfig
    from edgekit.train import train as run_training

    if mixed_precision not in ("auto", "on", "off"):
        raise EdgekitError(f"--mixed-precision {mixed_precision!r}: choose auto, on or off")
    config = TrainConfig(
        data=data, extra_data=tuple(extra_data or ()), exclude=str(exclude) if exclude else None,
        image_size=image_size, alpha=alpha, weights=weights,
        epochs=epochs, fine_tune_epochs=fine_tune_epochs, fine_tune_at=fine_tune_at, batch_size=batch_size,
        learning_rate=learning_rate, fine_tune_learning_rate=fine_tune_learning_rate,
        validation_fraction=validation_fraction, seed=seed,
        augment=AugmentConfig(augment, flip, rotation, zoom, translation, contrast), patience=patience,
        strategy=strategy, mixed_precision=mixed_precision, strict=strict, steps_per_epoch=steps_per_epoch,
        name=name, runs_dir=str(runs_dir) if runs_dir else None,
    )
    result = run_training(config, resume=resume)
    if result.manifest is None:
        typer.echo("worker finished (the chief writes the run)", err=True)
        return
    manifest = result.manifest
    validation, training = manifest.metrics.validation, manifest.training
    emit(
        {"run_dir": str(result.run_dir), "validation": dataclasses.asdict(validation),
         "training": dataclasses.asdict(training), "wall_time_s": manifest.wall_time_s},
        as_json,
        f"run: {result.run_dir}\nvalidation accuracy: {validation.accuracy:.4f} "
        f"(macro-F1 {validation.macro_f1:.4f}, n={validation.n})\n"
        f"epochs: {training.epochs_run}, wall time {manifest.wall_time_s:.0f} s, "
        f"{training.throughput_images_per_s} images/s",
    )


# ---------------------------------------------------------------- eval


@app.command("eval")
@user_errors
def eval_command(
    model: Annotated[Path, typer.Argument(help="A .keras or .tflite file, or a run / variant directory.")],
    data: Annotated[str | None, typer.Option(help="Class-folder dataset; default the run's validation split.")]
    = None,
    out: Annotated[Path | None, typer.Option(help="Where metrics.json and confusion.png go.")] = None,
    threads: Annotated[int | None, typer.Option(help="Interpreter threads for .tflite models.")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first unreadable image.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Accuracy, macro precision / recall / F1, per-class figures and a confusion matrix.

    $ edgekit eval runs/digits-20260101-120000
    $ edgekit eval runs/digits-20260101-120000/compressed/int8-ptq/model.tflite --data photos/test
    """
    from edgekit.evaluate import evaluate_model, summary_line

    result = evaluate_model(model, data=data, out_dir=out, num_threads=threads, strict=strict)
    payload = {"model": str(model), "runtime": result.runtime, "out_dir": str(result.out_dir),
               "metrics": {k: v for k, v in result.metrics.items() if k != "predictions"}}
    emit(payload, as_json, f"{model}: {summary_line(result.metrics)}\nwritten to {result.out_dir}")


# ---------------------------------------------------------------- compress


def _run_dir(run_dir: Path | None) -> Path:
    from edgekit.artifacts import latest_run

    return run_dir if run_dir is not None else latest_run()


@app.command()
@user_errors
def compress(
    run_dir: Annotated[Path | None, typer.Argument(help="A training run directory; default: the latest run.")]
    = None,
    recipe: Annotated[list[str] | None, typer.Option(
        help="A shipped recipe name (int8-ptq, prune50-int8, ...) or a YAML file; repeatable.")] = None,
    all_recipes: Annotated[bool, typer.Option("--all", help="Every shipped recipe.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Full-integer int8 conversion.")] = False,
    float16: Annotated[bool, typer.Option("--float16", help="Float16 weights.")] = False,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Dynamic-range (int8 weights) conversion.")] = False,
    prune: Annotated[float | None, typer.Option(help="Magnitude-prune to this sparsity first (e.g. 0.5).")]
    = None,
    cluster: Annotated[int | None, typer.Option(help="Cluster weights to this many centroids first.")] = None,
    qat: Annotated[bool, typer.Option("--qat", help="Quantization-aware fine-tuning before int8.")] = False,
    uint8_io: Annotated[bool, typer.Option("--uint8-io", help="uint8 model input/output (integer-only targets).")]
    = False,
    calibration_samples: Annotated[int, typer.Option(help="Training images used to calibrate int8.")] = 100,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs per shorthand stage.")] = 2,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the recipe(s) as YAML and stop.")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Then print the table of every variant of the run.")]
    = False,
    threads: Annotated[int | None, typer.Option(help="Interpreter threads for the accuracy pass.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a variant of the same name made by a different "
                                                        "recipe (an identical recipe is never redone).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Turn a trained run into .tflite variants, each measured on the validation split.

    $ edgekit compress --int8
    $ edgekit compress runs/digits-20260101-120000 --prune 0.5 --qat --int8
    $ edgekit compress --recipe prune50-int8 --recipe cluster16-int8 --compare
    """
    from edgekit.recipes import check_unique_names, load_recipe, recipe_from_flags, shipped_recipes

    if threads is not None and threads < 1:
        raise EdgekitError(f"--threads {threads}: must be at least 1")
    recipes = [load_recipe(name) for name in list(recipe or []) + (shipped_recipes() if all_recipes else [])]
    shorthand = any((int8, float16, dynamic, prune is not None, cluster is not None, qat))
    if shorthand:
        recipes.append(recipe_from_flags(int8=int8, float16=float16, dynamic=dynamic, prune=prune, qat=qat,
                                         cluster=cluster, uint8_io=uint8_io,
                                         calibration_samples=calibration_samples, epochs=epochs))
    if not recipes:
        raise EdgekitError("nothing to do: pass --recipe NAME, --all, or a shorthand such as --int8")
    check_unique_names(recipes)
    if dry_run:
        typer.echo("---\n".join(r.to_yaml() for r in recipes))
        return
    from edgekit.compress.pipeline import compress_all
    from edgekit.report import write_variant_report

    run = _run_dir(run_dir)
    variants = compress_all(run, recipes, threads=threads, force=force)
    results = [{"variant": v.manifest.name, "dir": str(v.directory), "status": v.status,
                "recipe_hash": v.manifest.recipe_hash, "accuracy": v.manifest.metrics.validation.accuracy,
                "size": v.manifest.tflite["size"]} for v in variants]
    if not as_json:
        for r in results:
            typer.echo(f"{r['variant']}: {r['dir']}/model.tflite  accuracy {r['accuracy']:.4f}  size {r['size']:,} B"
                       f"  ({r['status']})")
    if compare:
        rows, markdown = write_variant_report(run)
        emit({"variants": results, "report": rows}, as_json, markdown)
    elif as_json:
        typer.echo(json.dumps({"variants": results}, indent=2))


@app.command()
@user_errors
def report(
    run_dir: Annotated[Path | None, typer.Argument(help="A training run directory; default: the latest run.")]
    = None,
    as_json: JsonOption = False,
) -> None:
    """One table of every compressed variant of a run: size, gzip size, sparsity, accuracy, delta vs float.

    $ edgekit report runs/digits-20260101-120000
    """
    from edgekit.report import write_variant_report

    run = _run_dir(run_dir)
    rows, markdown = write_variant_report(run)
    emit({"run": str(run), "variants": rows}, as_json, markdown)


# ---------------------------------------------------------------- bench, deploy, doctor

DeviceOption = Annotated[str, typer.Option("--device", "-d", help="Device profile name (desktop, pi, rpi5, coral, "
                                                                  "...) or a profile .yaml file.")]
RuntimeOption = Annotated[str | None, typer.Option(
    help="Interpreter on the device: litert, tflite_runtime or tf.lite (default: the profile's runtime).")]
AcceptKeyOption = Annotated[bool, typer.Option("--accept-new-host-key",
                                               help="Trust an SSH host key seen for the first time.")]


def _threads(value: str | None) -> tuple[int | None, ...]:
    if not value:
        return (None,)
    try:
        threads = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise EdgekitError(f"--threads {value!r}: expected numbers separated by commas, e.g. 1,2,4") from None
    if any(t < 1 for t in threads):
        raise EdgekitError(f"--threads {value!r}: thread counts must be at least 1")
    return threads


def _check_runtime(runtime: str | None) -> None:
    from edgekit.devices import RUNTIMES

    if runtime is not None and runtime not in RUNTIMES:
        raise EdgekitError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")


@app.command()
@user_errors
def bench(
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
        min=1, help="Measure accuracy on the device over this many validation images (default: the whole split,"
                    " only when the device's runtime or delegate differs from the host's LiteRT).")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="Recommend the most accurate variant with p50 "
                                                              "at or under this.")] = None,
    min_accuracy: Annotated[float | None, typer.Option(help="Recommend the fastest variant with at least this "
                                                            "accuracy (0..1).")] = None,
    accept_new_host_key: AcceptKeyOption = False,
    as_json: JsonOption = False,
) -> None:
    """Accuracy, size and latency of every variant (or any .tflite) on a target: table, advice, Pareto plot.

    $ edgekit bench --device desktop --threads 1,2
    $ edgekit bench runs/digits-20260101-120000 --device pi --min-accuracy 0.95
    $ edgekit bench face_detector.tflite --device pi --runtime tflite_runtime
    $ edgekit bench --compare before/results.json --compare after/results.json
    """
    from edgekit.bench.advice import advice_markdown
    from edgekit.bench.report import compare as compare_results
    from edgekit.bench.report import results_markdown
    from edgekit.bench.run import BenchSettings
    from edgekit.bench.session import bench_session

    if compare:
        if len(compare) != 2:
            raise EdgekitError("--compare takes exactly two results.json files (pass it twice)")
        rows, table = compare_results(compare[0], compare[1])
        emit({"rows": rows}, as_json, table)
        return
    _check_runtime(runtime)
    settings = BenchSettings(threads=_threads(threads) if threads else (None,), runs=runs, warmup=warmup,
                             min_seconds=min_seconds, delegate=delegate, accept_new_host_key=accept_new_host_key,
                             runtime=runtime, images=images, accuracy_samples=accuracy_samples)
    session = bench_session(list(models) if models else [_run_dir(None)], device, settings, out=out,
                            max_latency_ms=max_latency_ms, min_accuracy=min_accuracy)
    result = session.result
    for row in result.rows:
        if row["status"] != "ok":
            typer.echo(f"warning: {row['variant']} ({row['delegate']}, threads {row['threads']}): {row['error']}",
                       err=True)
    emit({"device": session.device, "out_dir": str(session.out_dir), "partial": result.partial,
          "advice": session.advice, "rows": result.rows}, as_json,
         results_markdown(result.rows) + "\n" + advice_markdown(session.advice) + f"\nwritten to {session.out_dir}")
    if all(row["status"] == "error" for row in result.rows):
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
    accept_new_host_key: AcceptKeyOption = False,
    as_json: JsonOption = False,
) -> None:
    """Install a model (with its manifest and labels) and the runner on a device; sha256 checked there,
    and the runtime it will run with loads it there.

    $ edgekit deploy runs/digits-20260101-120000/compressed/int8-ptq --device pi
    $ edgekit deploy model.tflite --device coral-devboard --runtime tflite_runtime
    $ edgekit deploy runs/digits-20260101-120000/compressed/int8-ptq --device pi --service serve
    $ edgekit deploy runs/<run>/compressed/int8-ptq --device pi --service live --service-args '/dev/video0 --fps 5'
    $ edgekit deploy --device pi --remove-service serve
    """
    from edgekit.deploy import deploy as deploy_model
    from edgekit.devices import load_profile
    from edgekit.service import ServiceSpec, remove_from_device

    _check_runtime(runtime)
    if remove_service:
        result = remove_from_device(load_profile(device), remove_service, accept_new_host_key=accept_new_host_key)
        emit(result, as_json, f"removed {result['unit']} from {result['device']}")
        return
    if model is None:
        raise EdgekitError("deploy needs a MODEL (a .tflite file or a variant directory), or --remove-service")
    if service_args and not service:
        raise EdgekitError("--service-args needs --service serve or --service live")
    spec = ServiceSpec.parse(service, service_args) if service else None
    path = model / "model.tflite" if model.is_dir() else model
    result = deploy_model(load_profile(device), path, accept_new_host_key=accept_new_host_key,
                          runtime=runtime, service=spec)
    text = (f"deployed {path.name} (sha256 {result['model_sha256'][:12]}…) to {result['device']}: {result['model']}"
            f"\nrun it: {result['classify']}")
    if result.get("service"):
        unit = result["service"]
        text += (f"\nservice {unit['unit']}: {unit['state']} (token in {unit['env_file']}; logs: {unit['logs']}; "
                 f"remove: {unit['remove']})")
    emit(result, as_json, text)


@app.command()
@user_errors
def doctor(
    device: DeviceOption = "desktop",
    accept_new_host_key: AcceptKeyOption = False,
    as_json: JsonOption = False,
) -> None:
    """What a device has (Python, numpy, interpreters, Edge TPU runtime, cores, memory) and what is missing.

    $ edgekit doctor --device pi
    """
    from edgekit.deploy import doctor as run_doctor
    from edgekit.devices import load_profile

    report = run_doctor(load_profile(device), accept_new_host_key=accept_new_host_key)
    emit(report, as_json, _doctor_text(report))
    if not report.get("ok", True):
        raise typer.Exit(1)


def _doctor_text(report: dict) -> str:
    from edgekit.deploy import doctor_text

    return doctor_text(report)


# ---------------------------------------------------------------- feedback

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
    as_json: JsonOption = False,
) -> None:
    """Fetch the runner database and samples from a device over SSH, then import them.

    $ edgekit feedback pull --device pi
    """
    from edgekit.devices import load_profile
    from edgekit.feedback import pull

    _report_imports(pull(load_profile(device), name=name, accept_new_host_key=accept_new_host_key), "pulled",
                    as_json)


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
    as_json: JsonOption = False,
) -> None:
    """Write corrected samples as a class-folder dataset for `edgekit train --extra-data`.

    $ edgekit feedback export --out feedback-data && edgekit train --data photos --extra-data feedback-data
    """
    from edgekit.feedback import export, report_markdown

    report = export(out, imports)
    emit(report, as_json, report_markdown(report) + f"\nwritten to {out}")


# ---------------------------------------------------------------- data

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
    as_json: JsonOption = False,
) -> None:
    """Report duplicates, leaks between splits, class balance, odd images and likely label errors.

    Only reads the folder: the report (Markdown, JSON, contact sheets) goes to --out.

    $ edgekit data check photos/
    $ edgekit data check photos/ --run runs/photos-20260101-120000 --write-exclusions exclude.txt
    """
    from edgekit.datacheck.check import CheckOptions, check_folder, default_out_dir, exclusion_entries, write_check
    from edgekit.datacheck.exclude import write_exclusions as write_list
    from edgekit.datacheck.report import summary_lines

    if not 0 <= near_distance <= 32:
        raise EdgekitError(f"--near-distance {near_distance}: choose 0..32 bits (4 finds re-saved and resized copies)")
    report = check_folder(folder, run=run, options=CheckOptions(near_distance=near_distance, seed=seed))
    out_dir = out or default_out_dir(folder)
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


# ---------------------------------------------------------------- devices, recipes

devices_app = typer.Typer(no_args_is_help=False, invoke_without_command=True)
app.add_typer(devices_app, name="devices")
recipes_app = typer.Typer(no_args_is_help=False, invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")


@devices_app.callback()
@user_errors
def devices_group(ctx: typer.Context, as_json: JsonOption = False) -> None:
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
    from edgekit.report import markdown_table

    emit({"devices": rows}, as_json, markdown_table(
        ["name", "aliases", "connection", "address", "arch", "runtime", "delegate", "source"],
        [[r["name"], ", ".join(r["aliases"]) or "-", r["connection"], r["address"], r["arch"], r["runtime"],
          r["delegate"], r["source"]] for r in rows]))


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
def recipes_group(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List compression recipes: shipped ones and your own in $EDGEKIT_HOME/recipes.

    $ edgekit recipes
    $ edgekit recipes show prune50-int8
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgekit.recipes import load_recipe, recipe_sources
    from edgekit.report import markdown_table

    rows = []
    for name, source in recipe_sources().items():
        recipe = load_recipe(name)
        rows.append({"name": name, "stages": [s.type for s in recipe.stages], "description": recipe.description,
                     "source": source})
    emit({"recipes": rows}, as_json, markdown_table(
        ["name", "stages", "description", "source"],
        [[r["name"], " → ".join(r["stages"]), r["description"], r["source"]] for r in rows]))


@recipes_app.command("show")
@user_errors
def recipes_show(name: Annotated[str, typer.Argument(help="Recipe name or .yaml file.")]) -> None:
    """Print one recipe as the YAML edgekit applies (validated).

    $ edgekit recipes show int8-qat
    """
    from edgekit.recipes import load_recipe

    recipe = load_recipe(name)
    typer.echo(f"# {recipe.source}\n{recipe.to_yaml()}")
# ---------------------------------------------------------------- tune


@app.command()
@user_errors
def tune(
    device: Annotated[str | None, typer.Option("--device", "-d", help="Device profile to measure on (desktop, pi, "
                                                                      "coral, FILE.yaml); default desktop.")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="Budget: p90 latency on the device, ms.")] = None,
    max_size_kb: Annotated[float | None, typer.Option(
        help="Budget: .tflite size in KB (also makes size a third objective).")] = None,
    min_accuracy: Annotated[float | None, typer.Option(help="Budget: validation accuracy, e.g. 0.95.")] = None,
    data: Annotated[str | None, typer.Option(help="Image folder; default: the embedded digits.")] = None,
    space: Annotated[str | None, typer.Option(help="Search-space YAML; default: the shipped one.")] = None,
    trials: Annotated[int, typer.Option(help="Trials for the whole study (all workers), rejected ones "
                                             "included.")] = 20,
    timeout: Annotated[float | None, typer.Option(help="Stop this worker after S seconds.")] = None,
    storage: Annotated[str | None, typer.Option(help="Study database URL (postgresql://user:pw@host/db); "
                                                     "default: study.db in the tune directory.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name; default tune-<time>.")] = None,
    join: Annotated[str | None, typer.Option(help="Work on an existing study in --storage (another "
                                                  "machine's).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the study of this tune directory.")] = None,
    out: Annotated[Path | None, typer.Option(help="Tune directory; default $EDGEKIT_HOME/tunes/<study>.")] = None,
    runs: Annotated[int, typer.Option(help="Bench: at least this many timed runs per model.")] = 50,
    warmup: Annotated[int, typer.Option(help="Bench: untimed runs first.")] = 5,
    min_seconds: Annotated[float, typer.Option(help="Bench: and at least this long per model.")] = 2.0,
    threads: Annotated[int | None, typer.Option(help="Bench: interpreter threads; default: the profile's.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Find the most accurate model that meets a latency budget on the device (Optuna, multi-objective).

    Each candidate is timed as a random-weight model first (over budget: never trained), then trained,
    compressed and benchmarked like `edgekit train`, `compress` and `bench` would. --resume and --join use
    the study's own device, budget and space.

    $ edgekit tune --device pi --max-latency-ms 33 --trials 30
    $ edgekit tune --resume tunes/tune-20260101-120000
    $ edgekit tune --join shared --storage postgresql://edgekit@db.lan/edgekit
    """
    from edgekit.tune.study import tune as run_study

    result = run_study(resume_dir=resume, join_study=join, storage=storage, study_name=study, out=out,
                       trials=trials, timeout=timeout, device=device or "desktop", max_latency_ms=max_latency_ms,
                       max_size_kb=max_size_kb, min_accuracy=min_accuracy, data=data, space_path=space, runs=runs,
                       warmup=warmup, min_seconds=min_seconds, threads=threads)
    from edgekit import manifests
    from edgekit.tune.report import best_line

    manifest = manifests.read(result.tune_dir, manifests.TuneManifest)
    emit({"tune_dir": str(result.tune_dir), "study": result.study_name, "storage": result.storage,
          "counts": manifest.counts, "best": manifest.best}, as_json,
         f"{best_line(manifest.best, manifest.device)}\ntrials: "
         + ", ".join(f"{n} {state}" for state, n in manifest.counts.items())
         + f"\nreport: {result.tune_dir / 'trials.md'}, {result.tune_dir / 'pareto.png'}")


# ---------------------------------------------------------------- info


@app.command()
@user_errors
def info(
    path: Annotated[Path, typer.Argument(help="A run, variant or result directory, a file inside one, or any "
                                              ".tflite model.")],
    as_json: JsonOption = False,
) -> None:
    """Show what an artifact is, where it came from and how it measured; describe any .tflite model.

    $ edgekit info runs/digits-20260101-120000
    $ edgekit info face_detector.tflite
    $ edgekit info tunes/tune-20260101-120000
    """
    from edgekit.info import describe_path

    payload, text = describe_path(path)
    emit(payload, as_json, text)


if __name__ == "__main__":
    app()
