"""Training and evaluation commands: `edgekit train`, `edgekit eval`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import (
    JsonOption,
    TrustModelOption,
    app,
    emit,
    refuse,
    user_errors,
)
from edgekit.errors import EdgekitError


@app.command()
@user_errors
def train(
    ctx: typer.Context,
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
    deterministic: Annotated[bool, typer.Option(
        help="Reproducible training: TensorFlow's op determinism, so the same seed gives the same model "
             "(slower; see README).")] = False,
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
    from edgekit.config import AugmentConfig, TrainConfig, validate

    if resume is not None:
        refuse(ctx, tuple(p.name for p in ctx.command.params if p.name not in ("resume", "as_json")),
               "--resume continues with the run's own settings (its train_config.json); drop them")
    if not augment:
        refuse(ctx, ("flip", "rotation", "zoom", "translation", "contrast"), "--no-augment turns augmentation off")
    if not fine_tune_epochs:
        refuse(ctx, ("fine_tune_at", "fine_tune_learning_rate"), "only used with --fine-tune-epochs N (N > 0)")
    if fine_tune_epochs > 0 and TrainConfig(data=data, weights=weights).from_scratch:
        raise EdgekitError("--fine-tune-epochs: training from scratch (--weights none, the default for the digits) "
                           "has no pretrained body to fine-tune; use --epochs, or pass --weights")
    config = TrainConfig(
        data=data, extra_data=tuple(extra_data or ()), exclude=str(exclude) if exclude else None,
        image_size=image_size, alpha=alpha, weights=weights,
        epochs=epochs, fine_tune_epochs=fine_tune_epochs, fine_tune_at=fine_tune_at, batch_size=batch_size,
        learning_rate=learning_rate, fine_tune_learning_rate=fine_tune_learning_rate,
        validation_fraction=validation_fraction, seed=seed,
        augment=AugmentConfig(augment, flip, rotation, zoom, translation, contrast), patience=patience,
        strategy=strategy, mixed_precision=mixed_precision, strict=strict, steps_per_epoch=steps_per_epoch,
        name=name, runs_dir=str(runs_dir) if runs_dir else None,
        deterministic=deterministic,
    )
    validate(config)  # every number in its range before TensorFlow loads and before a run folder exists
    from edgekit.train import train as run_training

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

@app.command("eval")
@user_errors
def eval_command(
    model: Annotated[Path, typer.Argument(help="A .keras or .tflite file, or a run / variant directory.")],
    data: Annotated[str | None, typer.Option(help="Class-folder dataset; default the run's validation split.")]
    = None,
    out: Annotated[Path | None, typer.Option(help="Where metrics.json and confusion.png go.")] = None,
    threads: Annotated[int | None, typer.Option(help="Interpreter threads for .tflite models.")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first unreadable image.")] = False,
    trust_model: TrustModelOption = False,
    as_json: JsonOption = False,
) -> None:
    """Accuracy, macro precision / recall / F1, per-class figures and a confusion matrix.

    $ edgekit eval runs/digits-20260101-120000
    $ edgekit eval runs/digits-20260101-120000/compressed/int8-ptq/model.tflite --data photos/test
    """
    from edgekit.config import THREADS
    from edgekit.evaluate import evaluate_model, summary_line

    THREADS.check(threads, "--threads")
    result = evaluate_model(model, data=data, out_dir=out, num_threads=threads, strict=strict,
                            trust_model=trust_model)
    payload = {"model": str(model), "runtime": result.runtime, "out_dir": str(result.out_dir),
               "metrics": {k: v for k, v in result.metrics.items() if k != "predictions"}}
    emit(payload, as_json, f"{model}: {summary_line(result.metrics)}\nwritten to {result.out_dir}")
