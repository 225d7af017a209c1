"""`edgekit compress`: apply a recipe to a trained run and write one measured variant directory.

The variant is built in a scratch directory beside its destination and renamed into place only when
the .tflite, the applied recipe and the manifest are all written, so a failed or killed run leaves
nothing half-written. Accuracy is measured by running the exact .tflite file that ships.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import manifests
from edgekit.artifacts import (
    check_writable,
    process_alive,
    recover_swaps,
    replace_dir,
    write_bytes_atomic,
    write_text_atomic,
)
from edgekit.compress.convert import convert
from edgekit.compress.edgetpu import check_edgetpu
from edgekit.compress.finetune import EpochProgress, fine_tune
from edgekit.data import calibration_images, iter_pixel_batches, load_dataset, load_pixels, make_pipeline
from edgekit.errors import EdgekitError
from edgekit.evaluate import KerasPredictor, TFLitePredictor, evaluate_predictor
from edgekit.fleet.drift import ReferenceBuilder
from edgekit.model import load_keras_model
from edgekit.recipes import TRAINING_STAGES, Recipe, check_unique_names
from edgekit.tflite import parse as parse_tflite
from edgekit.tflite_metadata import add_classifier_metadata, lineage_record

log = logging.getLogger(__name__)

TFLITE_FILE = "model.tflite"
RECIPE_FILE = "recipe.yaml"
COMPRESSED_DIR = "compressed"
DRIFT_IMAGES = 256


@dataclass
class Variant:
    directory: Path
    manifest: manifests.VariantManifest
    status: str = "written"  # "written", "replaced", or "unchanged" (an identical recipe had already run)


@dataclass
class CompressContext:
    """What every recipe applied to one run shares, loaded once per invocation (not once per recipe)."""

    run_dir: Path
    run: manifests.RunManifest
    model: object
    splits: object
    drift_pixels: np.ndarray  # the first validation images: the float model's outputs on them are the reference
    float_probs: np.ndarray

    @property
    def image_size(self) -> int:
        return self.run.model.image_size


def load_context(run_dir: Path, trust_model: bool = False) -> CompressContext:
    """Verify the run, then load its model (in Keras' safe mode unless `trust_model`), dataset, validation
    pixels and the float model's outputs."""
    run_dir = Path(run_dir)
    run = manifests.read(run_dir, manifests.RunManifest)
    manifests.verify_files(run_dir, run, names=[run.MAIN_FILE])
    model = load_keras_model(run_dir / run.MAIN_FILE, trust=trust_model)
    splits = load_dataset(run.dataset.reload_spec)
    # Accuracy streams over the whole split; only the drift reference is held in memory (256 images).
    first = splits.validation.subset(np.arange(min(DRIFT_IMAGES, len(splits.validation))))
    drift_pixels = load_pixels(first, run.model.image_size)
    float_probs = KerasPredictor(model).predict(drift_pixels)
    return CompressContext(run_dir, run, model, splits, drift_pixels, float_probs)


def variant_dir(run_dir: Path, recipe: Recipe) -> Path:
    return Path(run_dir) / COMPRESSED_DIR / recipe.name


def gzip_size(content: bytes) -> int:
    """Size after gzip -9: what sparsity and clustering buy when a model is shipped compressed."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))


def existing_variant(run_dir: Path, recipe: Recipe, force: bool) -> Variant | None:
    """The finished variant this recipe would produce, if it is already there; refuses silent replacement.

    A variant is its name plus the hash of its recipe's stages: the same recipe again is a no-op, a
    different recipe under an existing name needs `--force`.
    """
    directory = variant_dir(run_dir, recipe)
    recover_swaps(directory.parent)  # a swap killed half-way: the old variant is back before we look
    found = manifests.read_optional(directory, manifests.VariantManifest)
    if found is None:
        return None
    wanted = manifests.recipe_hash(recipe.as_dict())
    if found.recipe_hash == wanted and not force:
        return Variant(directory, found, status="unchanged")
    if found.recipe_hash != wanted and not force:
        raise EdgekitError(
            f"{directory}: a variant named {recipe.name!r} exists from a different recipe (hash "
            f"{found.recipe_hash} vs {wanted}); rename the recipe or pass --force to replace it"
        )
    return None


def _training_stages(model, recipe: Recipe, train_ds, val_ds) -> tuple[object, dict, list[manifests.StageTiming]]:
    """Run prune / cluster / qat in order; returns the model to convert, sparsity, and stage timings."""
    from edgekit.compress import cluster, prune, qat  # tensorflow-model-optimization: only for these stages

    modules = {"prune": prune, "cluster": cluster, "qat": qat}
    timings, sparsity, previous = [], {}, []
    for stage in recipe.stages:
        if stage.type not in modules:
            continue
        started = time.time()
        log.info("%s: %s stage, %d epoch(s)", recipe.name, stage.type, stage.params.epochs)
        module = modules[stage.type]
        if stage.type == "qat":
            wrapped, callbacks = module.apply(model, stage.params, previous=previous)
        elif stage.type == "prune":
            wrapped, callbacks = module.apply(model, stage.params, steps_per_epoch=len(train_ds))
        else:
            wrapped, callbacks = module.apply(model, stage.params)
        fine_tune(wrapped, train_ds, val_ds, epochs=stage.params.epochs, learning_rate=stage.params.learning_rate,
                  callbacks=[*callbacks, EpochProgress(f"{recipe.name}: {stage.type}", stage.params.epochs)])
        model = module.finalize(wrapped)
        if stage.type == "prune":
            sparsity = prune.measure_sparsity(model)
        previous.append(stage.type)
        timings.append(manifests.StageTiming(stage.type, round(time.time() - started, 2)))
    return model, sparsity, timings


def compress(run_dir: Path, recipe: Recipe, *, threads: int | None = None, force: bool = False,
             context: CompressContext | None = None, lineage: dict | None = None) -> Variant:
    """Apply `recipe` to the run in `run_dir`; returns the variant (an identical one is not made again).

    Pass a `context` from `load_context` to share the loaded run between several recipes.
    """
    started = time.time()
    if threads is not None and threads < 1:
        raise EdgekitError(f"--threads {threads}: must be at least 1")
    existing = existing_variant(context.run_dir if context else Path(run_dir), recipe, force)
    if existing is not None:
        return existing
    context = context or load_context(run_dir)
    replacing = variant_dir(context.run_dir, recipe).exists()
    content, sparsity, timings = _build_tflite(context, recipe)
    final_dir = variant_dir(context.run_dir, recipe)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(final_dir.parent)
    recover_swaps(final_dir.parent)
    scratch = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.tmp-{os.getpid()}-", dir=final_dir.parent))
    try:
        manifest = _write_variant(scratch, context, recipe, content, threads, sparsity, timings, lineage or {},
                                  started)
        replace_dir(scratch, final_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Variant(final_dir, manifest, status="replaced" if replacing else "written")


def compress_all(run_dir: Path, recipes: list[Recipe], *, threads: int | None = None,
                 force: bool = False, trust_model: bool = False) -> list[Variant]:
    """Apply several recipes to one run, loading the run, its data and the float reference only once.

    Recipes whose identical variant already exists are reported unchanged without loading anything.
    """

    check_unique_names(recipes)
    if threads is not None and threads < 1:
        raise EdgekitError(f"--threads {threads}: must be at least 1")
    run_dir = Path(run_dir)
    manifests.read(run_dir, manifests.RunManifest)
    done = {recipe.name: existing_variant(run_dir, recipe, force) for recipe in recipes}
    check_writable(run_dir / COMPRESSED_DIR)
    context = None
    variants = []
    for recipe in recipes:
        if done[recipe.name] is not None:
            log.info("%s: an identical variant exists (recipe hash %s); nothing to do", recipe.name,
                     done[recipe.name].manifest.recipe_hash)
            variants.append(done[recipe.name])
            continue
        context = context or load_context(run_dir, trust_model=trust_model)
        log.info("compressing %s with recipe %s", run_dir.name, recipe.name)
        variants.append(compress(run_dir, recipe, threads=threads, force=force, context=context))
    return variants


def _build_tflite(context: CompressContext, recipe: Recipe) -> tuple[bytes, dict, list[manifests.StageTiming]]:
    """Training stages (if any), then conversion: the bytes that will ship."""
    config, size = context.run.config, context.image_size
    batch, seed = config.batch_size, config.seed
    train_ds = val_ds = None
    if any(stage.type in TRAINING_STAGES for stage in recipe.stages):  # else no pass over the training data
        train_ds = make_pipeline(context.splits.train, size, batch, training=True, seed=seed)
        val_ds = make_pipeline(context.splits.validation, size, batch)
    model, sparsity, timings = _training_stages(context.model, recipe, train_ds, val_ds)
    params = recipe.convert.params
    calibration = None
    if params.mode == "int8" and params.calibration_samples > 0:
        calibration = calibration_images(context.splits.train, size, params.calibration_samples, seed=seed)
    log.info("%s: converting (%s)", recipe.name, params.mode)
    convert_started = time.time()
    content = convert(model, params, calibration)
    # with the calibration images used: the recipe asks for at most this many, the split may have fewer
    timings.append(manifests.StageTiming("convert", round(time.time() - convert_started, 2),
                                         len(calibration) if calibration is not None else None))
    return content, sparsity, timings


def _measure(path: Path, context: CompressContext, threads: int | None) \
        -> tuple[dict, dict, dict, manifests.DriftReference]:
    """(metrics, output difference against the float Keras model, runtime, drift reference) of the exact
    file on disk; the drift reference (top-1 scores and classes) comes from the same accuracy pass."""

    predictor = TFLitePredictor(path, num_threads=threads)
    reference = ReferenceBuilder(context.splits.labels)
    metrics = evaluate_predictor(predictor, iter_pixel_batches(context.splits.validation, context.image_size), None,
                                 context.splits.labels, observe=reference.add)
    metrics.pop("predictions")
    diff = np.abs(predictor.predict(context.drift_pixels) - context.float_probs)
    return (metrics, {"max": float(diff.max()), "mean": float(diff.mean()), "n": int(len(diff))}, predictor.runtime,
            reference.result())


def _write_variant(scratch: Path, context: CompressContext, recipe: Recipe, content: bytes, threads: int | None,
                   sparsity: dict, timings: list[manifests.StageTiming], lineage: dict,
                   started: float) -> manifests.VariantManifest:

    run = context.run
    parent, recipe_hash = manifests.parent_ref(context.run_dir, run), manifests.recipe_hash(recipe.as_dict())
    # Standard metadata goes in before the accuracy pass, so the file measured is the file shipped.
    content = add_classifier_metadata(content, name=recipe.name, labels=run.model.labels, version=recipe_hash,
                                      lineage=lineage_record(parent, run.name, recipe.name, recipe_hash, lineage))
    write_bytes_atomic(scratch / TFLITE_FILE, content)
    write_text_atomic(scratch / RECIPE_FILE, recipe.to_yaml())
    write_text_atomic(scratch / "labels.txt", "\n".join(run.model.labels) + "\n")
    log.info("%s: measuring accuracy of the .tflite on %d validation images", recipe.name,
             len(context.splits.validation))
    metrics, diff, runtime, drift_reference = _measure(scratch / TFLITE_FILE, context, threads)
    files = [TFLITE_FILE, RECIPE_FILE, "labels.txt"]
    edgetpu = None
    if any(stage.type == "edgetpu" for stage in recipe.stages):
        edgetpu = _edgetpu(recipe, scratch)
        files += [name for name in ("edgetpu_report.json", "edgetpu_report.md") if (scratch / name).exists()]
    float_accuracy = run.metrics.validation.accuracy
    manifest = manifests.VariantManifest(
        name=recipe.name, recipe_hash=recipe_hash, parent=parent, run=run.name,
        model=dataclasses.replace(run.model, file=TFLITE_FILE), dataset=run.dataset, recipe=recipe,
        tflite={**parse_tflite(content).describe(), "size": len(content), "gzip_size": gzip_size(content)},
        sparsity=sparsity, runtime=manifests.RuntimeRecord(**runtime),
        metrics=manifests.VariantMetrics(
            validation=manifests.to_metrics(metrics), float_keras_accuracy=float_accuracy,
            accuracy_delta_vs_float=metrics["accuracy"] - float_accuracy,
            output_abs_diff_vs_float=manifests.OutputDiff(**diff)),
        timings=tuple(timings), wall_time_s=round(time.time() - started, 2), edgetpu=edgetpu, lineage=lineage,
        drift_reference=drift_reference)
    return manifests.write(scratch, manifest, files)


def remove_stale_scratch(compressed: Path) -> list[Path]:
    """Delete scratch folders left by a compress that was killed (its process no longer exists)."""
    removed = []
    for scratch in compressed.glob(".*.tmp-*"):
        pid = scratch.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and process_alive(int(pid)):
            continue
        shutil.rmtree(scratch, ignore_errors=True)
        removed.append(scratch)
    if removed:
        log.info("removed %d scratch folder(s) left by an interrupted compress", len(removed))
    return removed


def _edgetpu(recipe: Recipe, directory: Path) -> dict:
    params = next(s.params for s in recipe.stages if s.type == "edgetpu")
    return check_edgetpu(directory / TFLITE_FILE, directory, run_compiler=params.run_compiler)
