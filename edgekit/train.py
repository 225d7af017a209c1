"""`edgekit train`: fit the flat MobileNetV2 classifier and write a run directory with its manifest.

Transfer learning trains the head on a frozen body, then optionally fine-tunes the top of the body
at a lower learning rate. Distribution goes through tf.distribute; interruption is survived with
Keras's BackupAndRestore, so `--resume` continues from the last finished epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit import config as cfg
from edgekit import manifests
from edgekit.artifacts import (
    MANIFEST,
    atomic_path,
    check_writable,
    default_runs_dir,
    utc_now,
    write_json_atomic,
    write_text_atomic,
)
from edgekit.compat import gpus, keras, tf
from edgekit.compress.finetune import EpochProgress
from edgekit.data import DataSpec, iter_pixel_batches, load_dataset, make_pipeline
from edgekit.errors import EdgekitError
from edgekit.evaluate import KerasPredictor, evaluate_predictor
from edgekit.model import (
    ModelSpec,
    build_classifier,
    check_image_size,
    compile_for_training,
    resolve_weights,
    set_body_trainable,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
MODEL_FILE = "model.keras"
BEST_WEIGHTS = "checkpoints/best.weights.h5"
PREPROCESSING = {
    "pixel_range": (0, 255),
    "color": "RGB",
    "resize": "bilinear",
    "resize_mode": "squash to input size, no crop, no antialias (tf.image.resize)",
    "normalization": "inside the model: x / 127.5 - 1",
}


@dataclass
class TrainResult:
    run_dir: Path
    manifest: manifests.RunManifest | None  # None on multi-worker workers: the chief writes the run


# ---------------------------------------------------------------- hardware and distribution


def _tf_config() -> dict | None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise EdgekitError("TF_CONFIG is not valid JSON; see the tf.distribute multi-worker guide") from None


def select_strategy(name: str):
    """The tf.distribute strategy for `--strategy`, and a short description of it."""
    found = gpus()
    if name == "auto":
        if _tf_config():
            name = "multiworker"
        elif len(found) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy(), "default"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(), f"mirrored ({len(found)} GPU)" if found else "mirrored (CPU)"
    if name == "multiworker":
        config = _tf_config()
        if not config or "cluster" not in config:
            raise EdgekitError("--strategy multiworker needs TF_CONFIG with 'cluster' and 'task' set on every worker")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return strategy, f"multiworker ({strategy.num_replicas_in_sync} replicas)"
    raise EdgekitError(f"--strategy {name!r}: choose one of {', '.join(cfg.STRATEGIES)}")


def is_chief() -> bool:
    """Only the chief writes the run directory in multi-worker training; the others write scratch."""
    config = _tf_config()
    if not config or "task" not in config:
        return True
    task = config["task"]
    if task.get("type") == "chief":
        return True
    has_chief = "chief" in config.get("cluster", {})
    return not has_chief and task.get("type") == "worker" and int(task.get("index", 0)) == 0


def use_mixed_precision(setting: str) -> bool:
    if setting == "on":
        return True
    if setting == "off":
        return False
    return bool(gpus())


# ---------------------------------------------------------------- the run directory


def new_run_dir(config: cfg.TrainConfig) -> Path:
    runs_dir = Path(config.runs_dir) if config.runs_dir else default_runs_dir()
    name = config.name or f"{'digits' if config.data is None else Path(config.data).name}-" \
                          f"{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = runs_dir / name
    if (run_dir / MANIFEST).exists():
        raise EdgekitError(f"{run_dir}: a finished run already exists; pass another --name")
    if (run_dir / CONFIG_FILE).exists():
        raise EdgekitError(f"{run_dir}: an unfinished run exists; continue it with --resume {run_dir}")
    return run_dir


def load_resume_config(run_dir: Path) -> cfg.TrainConfig:
    run_dir = Path(run_dir)
    if (run_dir / MANIFEST).exists():
        raise EdgekitError(f"{run_dir}: this run already finished; nothing to resume")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise EdgekitError(f"{run_dir}: no {CONFIG_FILE}; is this a run directory made by `edgekit train`?")
    config = cfg.from_mapping(cfg.TrainConfig, json.loads(path.read_text()), str(path))
    return dataclasses.replace(config, runs_dir=str(run_dir.parent), name=run_dir.name)


def _callbacks(run_dir: Path, phase: str, config: cfg.TrainConfig, epochs: int, extra: tuple = ()) -> list:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    progress = [EpochProgress(f"train ({phase})", epochs)] if epochs and not sys.stderr.isatty() else []
    return [*extra, *progress,
        keras.callbacks.BackupAndRestore(str(run_dir / "backup" / phase)),
        keras.callbacks.ModelCheckpoint(str(run_dir / BEST_WEIGHTS), monitor="val_accuracy", mode="max",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.patience),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(2, config.patience // 3),
                                          min_lr=1e-6),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch"),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]


def _phases(config: cfg.TrainConfig, pretrained: bool) -> list[tuple[str, int, int, float, int | None]]:
    """(name, first epoch, last epoch, learning rate, body layers trainable from) for each fit call."""
    if not pretrained:
        return [("scratch", 0, config.epochs, config.learning_rate, 0)]
    phases = [("head", 0, config.epochs, config.learning_rate, None)]
    if config.fine_tune_epochs:
        phases.append(("fine-tune", config.epochs, config.epochs + config.fine_tune_epochs,
                       config.fine_tune_learning_rate, config.fine_tune_at))
    return phases


def _phase_weights(phase: str) -> str:
    return f"checkpoints/after-{phase}.weights.h5"


def _finished_phases(work_dir: Path) -> list[str]:
    state = work_dir / "state.json"
    return json.loads(state.read_text())["finished_phases"] if state.is_file() else []


def _finish_phase(work_dir: Path, phase: str, model) -> None:
    """Mark a fit call done (BackupAndRestore forgets a phase once it ends) so --resume skips it."""
    with atomic_path(work_dir / _phase_weights(phase)) as tmp:
        model.save_weights(str(tmp))
    write_json_atomic(work_dir / "state.json", {"finished_phases": _finished_phases(work_dir) + [phase]})


def _exportable_copy(model, spec: ModelSpec, best_weights: Path):
    """The best weights in a plain float32 model built outside any distribution strategy.

    Exported models must not carry mixed-precision layers or distributed variables (loading h5 weights
    into MultiWorkerMirroredStrategy variables fails on batch-norm statistics).
    """
    keras.mixed_precision.set_global_policy("float32")
    clone = build_classifier(spec)
    if best_weights.exists():
        clone.load_weights(str(best_weights))
    else:
        clone.set_weights(model.get_weights())
    return clone


def _prepare(config: cfg.TrainConfig, resume: Path | None) -> tuple[cfg.TrainConfig, str | None]:
    """Check everything that can be checked before any work: options, folders, then weights."""
    if resume is not None:
        config = load_resume_config(resume)
    config = config.resolved()
    cfg.validate(config)
    if config.exclude is not None and not Path(config.exclude).is_file():
        raise EdgekitError(f"--exclude {config.exclude}: no such file; write one with "
                           "`edgekit data check DIR --write-exclusions F`")
    check_image_size(config.image_size)
    for folder in ([config.data] if config.data else []) + list(config.extra_data):
        if not Path(folder).expanduser().is_dir():  # before the weights: the more basic mistake first
            raise EdgekitError(f"{folder}: no such data folder; pass a folder with one sub-folder per class")
    check_writable(Path(config.runs_dir) if config.runs_dir else default_runs_dir())
    return config, resolve_weights(config.weights, config.alpha, config.image_size)


def _directories(config: cfg.TrainConfig, resume: Path | None, chief: bool) -> tuple[Path, Path]:
    """(run directory, directory this process writes): workers never touch the run directory."""
    if resume is not None:
        return Path(resume), Path(resume)
    if not chief:  # the chief may be creating the run directory right now
        run_dir = Path(config.runs_dir or default_runs_dir()) / (config.name or "worker")
        return run_dir, Path(tempfile.mkdtemp(prefix="edgekit-worker-"))
    run_dir = new_run_dir(config)
    return run_dir, run_dir


@dataclass
class _Fit:
    model: object
    fit_seconds: float = 0.0
    images_seen: int = 0


def _fit_phases(config: cfg.TrainConfig, splits, model, strategy, work_dir: Path, chief: bool,
                pretrained: bool, extra_callbacks: tuple = ()) -> _Fit:
    """Run each fit call (head, fine-tune, or scratch), skipping phases a resumed run already finished."""
    train_ds = make_pipeline(splits.train, config.image_size, config.batch_size, training=True,
                             augment=config.augment, seed=config.seed, cache=config.cache)
    val_ds = make_pipeline(splits.validation, config.image_size, config.batch_size, cache=config.cache)
    if config.steps_per_epoch:  # capped epochs walk on through the data instead of running out of it
        train_ds = train_ds.repeat()
    fit, done = _Fit(model), _finished_phases(work_dir)
    for phase, first, last, learning_rate, trainable_from in _phases(config, pretrained):
        if phase in done:
            model.load_weights(str(work_dir / _phase_weights(phase)))
            log.info("phase %s already finished; continuing after it", phase)
            continue
        if trainable_from == 0:
            for layer in model.layers:
                layer.trainable = True
        else:
            set_body_trainable(model, trainable_from)
        with strategy.scope():
            compile_for_training(model, learning_rate)
        phase_start = time.time()
        with contextlib.redirect_stdout(sys.stderr), _disk_errors(work_dir):  # stdout is for results
            history = model.fit(train_ds, validation_data=val_ds, initial_epoch=first, epochs=last,
                                steps_per_epoch=config.steps_per_epoch, validation_steps=None,
                                callbacks=_callbacks(work_dir, phase, config, last if chief else 0, extra_callbacks),
                                verbose=_verbosity(chief))
        fit.fit_seconds += time.time() - phase_start
        steps = config.steps_per_epoch or -(-len(splits.train) // config.batch_size)
        fit.images_seen += len(history.epoch) * min(len(splits.train), steps * config.batch_size)
        _finish_phase(work_dir, phase, model)
    return fit


@contextlib.contextmanager
def _disk_errors(work_dir: Path):
    """A full or read-only disk during fit (checkpoints, logs) is the user's to fix, and resumable."""
    try:
        yield
    except (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError) as exc:
        text = str(exc)
        if not isinstance(exc, OSError) and "No space left" not in text and "Read-only" not in text \
                and "Permission denied" not in text:
            raise
        reason = "no space left on the device" if "No space" in text or getattr(exc, "errno", None) == 28 else \
            text.strip().splitlines()[0][:160]
        raise EdgekitError(f"{work_dir}: writing checkpoints failed ({reason}); free space or fix permissions, "
                           f"then continue with `edgekit train --resume {work_dir}`") from None


def _verbosity(chief: bool) -> int:
    """Keras's progress bar on a terminal; elsewhere (logs, CI) `EpochProgress` writes one line per epoch."""
    return 1 if chief and sys.stderr.isatty() else 0


def epochs_in_history(run_dir: Path) -> int:
    """Epochs finished over the run's whole life, resumed processes included (CSVLogger appends)."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return 0
    rows = path.read_text().splitlines()[1:]
    return len({row.split(",", 1)[0] for row in rows if row and not row.startswith("epoch")})


def train(config: cfg.TrainConfig, resume: Path | None = None, *, callbacks: tuple = (),
          lineage: dict | None = None) -> TrainResult:
    """Train a classifier and write its run directory; returns the directory and manifest.

    `callbacks` are extra Keras callbacks (`edgekit tune` stops hopeless candidates with one);
    `lineage` is recorded as the manifest's `lineage` (e.g. the tune study and trial that asked for the run).
    """
    config, weights_path = _prepare(config, resume)
    strategy, strategy_name = select_strategy(config.strategy)
    chief = is_chief()
    run_dir, work_dir = _directories(config, resume, chief)
    created = not work_dir.exists()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work_dir / CONFIG_FILE, cfg.to_dict(config))
        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            # process-wide and not reversible: every later op in this process runs its deterministic kernel
            tf.config.experimental.enable_op_determinism()
        splits = load_dataset(DataSpec(config.data, tuple(config.extra_data), config.image_size, config.seed,
                                       config.validation_fraction, config.strict, config.max_image_pixels,
                                       exclude=config.exclude))
    except BaseException:
        if created and chief:  # nothing was trained: leave no half-made run behind
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    mixed = use_mixed_precision(config.mixed_precision)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    model_spec = ModelSpec(len(splits.labels), config.image_size, config.alpha, config.dropout,
                           config.bn_momentum)
    log.info("training on %d images, validating on %d, %d classes, strategy %s%s", len(splits.train),
             len(splits.validation), len(splits.labels), strategy_name, ", mixed_float16" if mixed else "")
    started = time.time()
    with strategy.scope():
        model = build_classifier(model_spec, weights_path)
    fit = _fit_phases(config, splits, model, strategy, work_dir, chief, weights_path is not None, tuple(callbacks))
    if not chief:
        # a worker must not read variables after fit: that is a collective op the chief may have left
        shutil.rmtree(work_dir, ignore_errors=True)
        return TrainResult(run_dir, None)
    model = _exportable_copy(fit.model, model_spec, work_dir / BEST_WEIGHTS)
    hardware = manifests.Hardware(gpus=len(gpus()), strategy=strategy_name,
                                  replicas=strategy.num_replicas_in_sync, mixed_precision=mixed)
    manifest = _write_run(run_dir, config, splits, model, model_spec, fit, hardware, started, lineage or {})
    return TrainResult(run_dir, manifest)


def _write_run(run_dir: Path, config: cfg.TrainConfig, splits, model, model_spec: ModelSpec, fit: _Fit,
               hardware: manifests.Hardware, started: float, lineage: dict) -> manifests.RunManifest:
    metrics = evaluate_predictor(KerasPredictor(model), iter_pixel_batches(splits.validation, config.image_size),
                                 None, splits.labels)
    metrics.pop("predictions")
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        model.save(tmp)
    write_text_atomic(run_dir / "labels.txt", "\n".join(splits.labels) + "\n")
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    contract = manifests.ModelContract(
        file=MODEL_FILE, input_size=(config.image_size, config.image_size, 3), labels=tuple(splits.labels),
        **PREPROCESSING, architecture={"family": "MobileNetV2", **dataclasses.asdict(model_spec)},
        weights=config.weights, parameters=int(model.count_params()))
    training = manifests.TrainingStats(
        epochs_run=epochs_in_history(run_dir), fit_seconds=round(fit.fit_seconds, 2),
        throughput_images_per_s=round(fit.images_seen / fit.fit_seconds, 1) if fit.fit_seconds else None)
    manifest = manifests.RunManifest(
        name=run_dir.name, model=contract, dataset=splits.record, config=config,
        seed=config.seed, hardware=hardware, training=training, wall_time_s=round(time.time() - started, 2),
        finished=utc_now(), metrics=manifests.RunMetrics(validation=manifests.to_metrics(metrics)), lineage=lineage)
    files = [MODEL_FILE, "labels.txt", CONFIG_FILE] + (["history.csv"] if (run_dir / "history.csv").exists()
                                                       else [])
    return manifests.write(run_dir, manifest, files)
