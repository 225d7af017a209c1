"""The `edgekit` command: a thin typer layer that parses options and calls one library function each.

Results go to stdout (`--json` for machines), progress and warnings to stderr. A user mistake is an
`EdgekitError`: one line on stderr, exit code 1, no traceback unless `--debug`.
"""

from __future__ import annotations

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


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
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
    """
    from edgekit.config import AugmentConfig, TrainConfig
    from edgekit.train import train as run_training

    if mixed_precision not in ("auto", "on", "off"):
        raise EdgekitError(f"--mixed-precision {mixed_precision!r}: choose auto, on or off")
    config = TrainConfig(
        data=data, extra_data=tuple(extra_data or ()), image_size=image_size, alpha=alpha, weights=weights,
        epochs=epochs, fine_tune_epochs=fine_tune_epochs, fine_tune_at=fine_tune_at, batch_size=batch_size,
        learning_rate=learning_rate, fine_tune_learning_rate=fine_tune_learning_rate,
        validation_fraction=validation_fraction, seed=seed,
        augment=AugmentConfig(augment, flip, rotation, zoom, translation, contrast), patience=patience,
        strategy=strategy, mixed_precision=mixed_precision, strict=strict, steps_per_epoch=steps_per_epoch,
        name=name, runs_dir=str(runs_dir) if runs_dir else None,
    )
    result = run_training(config, resume=resume)
    if not result.manifest:
        typer.echo("worker finished (the chief writes the run)", err=True)
        return
    validation = result.manifest["metrics"]["validation"]
    training = result.manifest["training"]
    emit(
        {"run_dir": str(result.run_dir), "validation": validation, "training": training,
         "wall_time_s": result.manifest["wall_time_s"]},
        as_json,
        f"run: {result.run_dir}\nvalidation accuracy: {validation['accuracy']:.4f} "
        f"(macro-F1 {validation['macro_f1']:.4f}, n={validation['n']})\n"
        f"epochs: {training['epochs_run']}, wall time {result.manifest['wall_time_s']:.0f} s, "
        f"{training['throughput_images_per_s']} images/s",
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
    as_json: JsonOption = False,
) -> None:
    """Turn a trained run into .tflite variants, each measured on the validation split.

    $ edgekit compress --int8
    $ edgekit compress runs/digits-20260101-120000 --prune 0.5 --qat --int8
    $ edgekit compress --recipe prune50-int8 --recipe cluster16-int8 --compare
    """
    from edgekit.recipes import load_recipe, recipe_from_flags, shipped_recipes

    names = list(recipe or []) + (shipped_recipes() if all_recipes else [])
    recipes = [load_recipe(name) for name in names]
    if any((int8, float16, dynamic, prune is not None, cluster is not None, qat)) or not recipes:
        if not recipes and not any((int8, float16, dynamic, prune is not None, cluster is not None, qat)):
            raise EdgekitError("nothing to do: pass --recipe NAME, --all, or a shorthand such as --int8")
        recipes.append(recipe_from_flags(int8=int8, float16=float16, dynamic=dynamic, prune=prune, qat=qat,
                                         cluster=cluster, uint8_io=uint8_io,
                                         calibration_samples=calibration_samples, epochs=epochs))
    if dry_run:
        typer.echo("---\n".join(r.to_yaml() for r in recipes))
        return
    from edgekit.compress.pipeline import compress as run_compress
    from edgekit.report import write_variant_report

    run = _run_dir(run_dir)
    results = []
    for item in recipes:
        typer.echo(f"compressing {run.name} with recipe {item.name} ...", err=True)
        variant = run_compress(run, item, threads=threads)
        validation = variant.manifest["metrics"]["validation"]
        results.append({"variant": item.name, "dir": str(variant.directory), "accuracy": validation["accuracy"],
                        "size": variant.manifest["tflite"]["size"]})
        if not as_json:
            typer.echo(f"{item.name}: {variant.directory / 'model.tflite'}  accuracy {validation['accuracy']:.4f}  "
                       f"size {variant.manifest['tflite']['size']:,} B")
    if compare:
        rows, markdown = write_variant_report(run)
        if as_json:
            typer.echo(json.dumps({"variants": results, "report": rows}, indent=2, default=str))
        else:
            typer.echo(markdown)
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
    if not rows:
        raise EdgekitError(f"{run}: no compressed variants yet; run `edgekit compress {run} --int8` first")
    emit({"run": str(run), "variants": rows}, as_json, markdown)


# ---------------------------------------------------------------- bench, deploy, doctor

DeviceOption = Annotated[str, typer.Option("--device", "-d", help="Device profile name (desktop, pi, rpi5, coral, "
                                                                  "...) or a profile .yaml file.")]
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
    accept_new_host_key: AcceptKeyOption = False,
    as_json: JsonOption = False,
) -> None:
    """Accuracy, size and latency of every variant on a target, as one table plus a Pareto plot.

    $ edgekit bench --device desktop --threads 1,2
    $ edgekit bench runs/digits-20260101-120000 --device pi
    $ edgekit bench --compare before/results.json --compare after/results.json
    """
    import time as _time

    from edgekit.bench.report import compare as compare_results
    from edgekit.bench.report import results_markdown, write_results
    from edgekit.bench.run import BenchSettings, collect_variants, run_bench
    from edgekit.devices import load_profile

    if compare:
        if len(compare) != 2:
            raise EdgekitError("--compare takes exactly two results.json files (pass it twice)")
        rows, table = compare_results(compare[0], compare[1])
        emit({"rows": rows}, as_json, table)
        return
    profile = load_profile(device)
    targets = list(models) if models else [_run_dir(None)]
    variants = collect_variants(targets)
    settings = BenchSettings(threads=_threads(threads) if threads else (profile.threads,), runs=runs,
                             warmup=warmup, min_seconds=min_seconds, delegate=delegate,
                             accept_new_host_key=accept_new_host_key)
    result = run_bench(variants, profile, settings)
    anchor = targets[0] if targets[0].is_dir() else targets[0].parent
    out_dir = out or anchor / "bench" / f"{profile.name}-{_time.strftime('%Y%m%d-%H%M%S')}"
    parents = [{"path": str(v.path.resolve()), "sha256": (v.manifest or {}).get("files", {}).get(
        v.path.name, {}).get("sha256")} for v in variants]
    write_results(out_dir, profile.name, result, {k: getattr(settings, k) for k in
                                                  ("threads", "runs", "warmup", "min_seconds", "delegate")},
                  parents)
    for row in result.rows:
        if row["status"] != "ok":
            typer.echo(f"warning: {row['variant']} ({row['delegate']}, threads {row['threads']}): {row['error']}",
                       err=True)
    emit({"device": profile.name, "out_dir": str(out_dir), "partial": result.partial, "rows": result.rows},
         as_json, results_markdown(result.rows) + f"\nwritten to {out_dir}")
    if all(row["status"] == "error" for row in result.rows):
        raise typer.Exit(1)


@app.command()
@user_errors
def deploy(
    model: Annotated[Path, typer.Argument(help="A .tflite file or a variant directory.")],
    device: DeviceOption = "desktop",
    accept_new_host_key: AcceptKeyOption = False,
    as_json: JsonOption = False,
) -> None:
    """Install a model (with its manifest and labels) and the runner on a device; sha256 checked there.

    $ edgekit deploy runs/digits-20260101-120000/compressed/int8-ptq --device pi
    """
    from edgekit.bench.targets import deploy as deploy_model
    from edgekit.devices import load_profile

    path = model / "model.tflite" if model.is_dir() else model
    result = deploy_model(load_profile(device), path, accept_new_host_key=accept_new_host_key)
    emit(result, as_json, f"deployed {path.name} (sha256 {result['model_sha256'][:12]}…) to {result['device']}:"
                          f" {result['model']}\nrun it: {result['classify']}")


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
    from edgekit.bench.targets import doctor as run_doctor
    from edgekit.devices import load_profile

    report = run_doctor(load_profile(device), accept_new_host_key=accept_new_host_key)
    emit(report, as_json, _doctor_text(report))
    if not report.get("ok", True):
        raise typer.Exit(1)


def _doctor_text(report: dict) -> str:
    lines = [f"{key}: {value}" for key, value in report.items()
             if key not in ("missing", "warnings", "interpreters") and not isinstance(value, (dict, list))]
    for name, info in (report.get("interpreters") or {}).items():
        lines.append(f"interpreter {name}: {info}")
    lines += [f"missing: {line}" for line in report.get("missing") or []]
    lines += [f"warning: {line}" for line in report.get("warnings") or []]
    return "\n".join(lines)


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


# ---------------------------------------------------------------- info


@app.command()
@user_errors
def info(
    path: Annotated[Path, typer.Argument(help="A run, variant or result directory, or a file inside one.")],
    as_json: JsonOption = False,
) -> None:
    """Show an artifact's manifest: what it is, where it came from, how it measured.

    $ edgekit info runs/digits-20260101-120000
    """
    from edgekit.artifacts import read_manifest
    from edgekit.report import describe_manifest

    directory = path if path.is_dir() else path.parent
    manifest = read_manifest(directory)
    emit(manifest, as_json, describe_manifest(directory, manifest))


if __name__ == "__main__":
    app()
