"""`edgekit compress`: apply a recipe to a trained run and write one measured variant directory.

The variant is built in a scratch directory beside its destination and renamed into place only when
the .tflite, the applied recipe and the manifest are all written, so a failed or killed run leaves
nothing half-written. Accuracy is measured by running the exact .tflite file that ships.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.artifacts import parent_record, verify_files, write_bytes_atomic, write_manifest, write_text_atomic
from edgekit.data import (
    calibration_images,
    iter_pixel_batches,
    load_dataset,
    load_pixels,
    make_pipeline,
    spec_from_description,
)
from edgekit.errors import EdgekitError
from edgekit.evaluate import KerasPredictor, TFLitePredictor, evaluate_predictor
from edgekit.model import load_keras_model
from edgekit.recipes import Recipe

log = logging.getLogger(__name__)

TFLITE_FILE = "model.tflite"
RECIPE_FILE = "recipe.yaml"
COMPRESSED_DIR = "compressed"


@dataclass
class Variant:
    directory: Path
    manifest: dict


def variant_dir(run_dir: Path, recipe: Recipe) -> Path:
    return Path(run_dir) / COMPRESSED_DIR / recipe.name


def gzip_size(content: bytes) -> int:
    """Size after gzip -9: what sparsity and clustering buy when a model is shipped compressed."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))


def _training_stages(model, recipe: Recipe, train_ds, val_ds) -> tuple[object, dict, list[dict]]:
    """Run prune / cluster / qat in order; returns the model to convert, sparsity, and stage timings."""
    from edgekit.compress import cluster, prune, qat
    from edgekit.compress.finetune import fine_tune

    modules = {"prune": prune, "cluster": cluster, "qat": qat}
    timings, sparsity, previous = [], {}, []
    for stage in recipe.stages:
        if stage.type not in modules:
            continue
        started = time.time()
        module = modules[stage.type]
        if stage.type == "qat":
            wrapped, callbacks = module.apply(model, stage.params, previous=previous)
        elif stage.type == "prune":
            wrapped, callbacks = module.apply(model, stage.params, steps_per_epoch=len(train_ds))
        else:
            wrapped, callbacks = module.apply(model, stage.params)
        fine_tune(wrapped, train_ds, val_ds, epochs=stage.params.epochs, learning_rate=stage.params.learning_rate,
                  callbacks=callbacks)
        model = module.finalize(wrapped)
        if stage.type == "prune":
            sparsity = prune.measure_sparsity(model)
        previous.append(stage.type)
        timings.append({"stage": stage.type, "seconds": round(time.time() - started, 2)})
    return model, sparsity, timings


def compress(run_dir: Path, recipe: Recipe, *, threads: int | None = None, force: bool = True) -> Variant:
    """Apply `recipe` to the run in `run_dir`; returns the written variant."""
    from edgekit.compress.convert import convert, describe_tflite

    run_dir = Path(run_dir)
    started = time.time()
    manifest = verify_files(run_dir, names=["model.keras"])
    if manifest.get("kind") != "run":
        raise EdgekitError(f"{run_dir}: is a {manifest.get('kind')} artifact, not a training run")
    model = load_keras_model(run_dir / "model.keras")
    image_size = manifest["model"]["input_size"][0]
    config = manifest.get("config", {})
    splits = load_dataset(spec_from_description(manifest["dataset"], image_size))
    # drift is measured on the first 256 validation images; accuracy streams over all of them
    drift_pixels = load_pixels(splits.validation.subset(np.arange(min(256, len(splits.validation)))), image_size)
    float_probs = KerasPredictor(model).predict(drift_pixels)

    batch = int(config.get("batch_size", 64))
    train_ds = val_ds = None
    if any(stage.type in ("prune", "cluster", "qat") for stage in recipe.stages):  # else no pass over train
        train_ds = make_pipeline(splits.train, image_size, batch, training=True, seed=int(config.get("seed", 42)))
        val_ds = make_pipeline(splits.validation, image_size, batch)
    model, sparsity, timings = _training_stages(model, recipe, train_ds, val_ds)

    convert_params = recipe.convert.params
    calibration = None
    if convert_params.mode == "int8" and convert_params.calibration_samples > 0:
        calibration = calibration_images(splits.train, image_size, convert_params.calibration_samples,
                                         seed=int(config.get("seed", 42)))
    convert_started = time.time()
    content = convert(model, convert_params, calibration)
    timings.append({"stage": "convert", "seconds": round(time.time() - convert_started, 2)})

    final_dir = variant_dir(run_dir, recipe)
    if final_dir.exists() and not force:
        raise EdgekitError(f"{final_dir}: exists; pass --force to replace it")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.tmp-", dir=final_dir.parent))
    try:
        write_bytes_atomic(scratch / TFLITE_FILE, content)
        write_text_atomic(scratch / RECIPE_FILE, recipe.to_yaml())
        write_text_atomic(scratch / "labels.txt", "\n".join(manifest["model"]["labels"]) + "\n")
        predictor = TFLitePredictor(scratch / TFLITE_FILE, num_threads=threads)
        metrics = evaluate_predictor(predictor, iter_pixel_batches(splits.validation, image_size), None,
                                     splits.labels)
        probs_diff = np.abs(predictor.predict(drift_pixels) - float_probs)
        metrics.pop("predictions")
        float_accuracy = manifest["metrics"]["validation"]["accuracy"]
        files = [TFLITE_FILE, RECIPE_FILE, "labels.txt"]
        extra = {}
        if any(stage.type == "edgetpu" for stage in recipe.stages):
            extra["edgetpu"] = _edgetpu(recipe, scratch)
            files += [name for name in ("edgetpu_report.json", "edgetpu_report.md") if (scratch / name).exists()]
        variant_manifest = {
            "kind": "variant",
            "name": recipe.name,
            "parent": parent_record(run_dir, manifest, "model.keras"),
            "run": manifest.get("name"),
            "model": {**manifest["model"], "file": TFLITE_FILE},
            "dataset": manifest["dataset"],
            "recipe": recipe.as_dict(),
            "tflite": {**describe_tflite(content), "size": len(content), "gzip_size": gzip_size(content)},
            "sparsity": sparsity,
            "runtime": predictor.runtime,
            "metrics": {
                "validation": metrics,
                "float_keras_accuracy": float_accuracy,
                "accuracy_delta_vs_float": metrics["accuracy"] - float_accuracy,
                "output_abs_diff_vs_float": {"max": float(probs_diff.max()), "mean": float(probs_diff.mean()),
                                             "n": int(len(probs_diff))},
            },
            "timings": timings,
            "wall_time_s": round(time.time() - started, 2),
            **extra,
        }
        variant_manifest = write_manifest(scratch, variant_manifest, files)
        _replace_dir(scratch, final_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Variant(final_dir, variant_manifest)


def _edgetpu(recipe: Recipe, directory: Path) -> dict:
    from edgekit.compress.edgetpu import check_edgetpu

    params = next(s.params for s in recipe.stages if s.type == "edgetpu")
    return check_edgetpu(directory / TFLITE_FILE, directory, run_compiler=params.run_compiler)


def _replace_dir(scratch: Path, final_dir: Path) -> None:
    """Swap the finished scratch directory into place; the old variant is removed only after."""
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{int(time.time() * 1000)}")
        final_dir.rename(old)
    scratch.rename(final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
