"""Latency before training: time a random-weight conversion of a candidate on the device, with a cache.

A dense model's latency does not depend on its weights, so a candidate's architecture (width, input size,
number of classes) and its recipe's convert stage are timed on the target before anything is trained, and
over-budget candidates are never trained. The probe model is built with a fixed seed, so the same
architecture and convert settings give the same `.tflite` bytes (checked across processes by the tests);
latencies are cached under that file's sha256 + device (profile name and address) + runtime + delegate +
threads, in the Optuna study itself (study user attributes), so every worker of a shared study sees
every measurement. A second entry maps the architecture key to the probe's sha256 and size, so a cache
hit needs no conversion at all.

Sparsity: edgekit's converter stores pruned weights densely (no DENSIFY ops), and
`benchmarks/sparse_inference.py` measured pruned models at 0.98-1.0x the latency of their dense parents
with LiteRT. The probe is therefore dense; to stay safe should a runtime use sparse kernels, a recipe
with a prune stage is rejected only when its dense p90 times (1 - target sparsity), the best case of a
linear speed-up, is still over budget. Every trained candidate is then timed again as its real variant,
and that measurement, not the probe's, is its objective.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edgekit import manifests
from edgekit.artifacts import MANIFEST, write_bytes_atomic
from edgekit.bench.rows import BenchRow
from edgekit.bench.run import collect_variants, run_bench
from edgekit.data import calibration_images
from edgekit.errors import EdgekitError
from edgekit.recipes import Recipe
from edgekit.tflite import parse

log = logging.getLogger(__name__)

PROBE_FILE = "model.tflite"


class DeviceUnreachable(EdgekitError):
    """The target cannot be reached at all: the study must stop, not fail trial after trial."""


@dataclass(frozen=True)
class Probe:
    sha256: str
    size: int
    p90_ms: float
    p50_ms: float
    runtime: str | None
    cached: bool
    directory: str | None = None


def recipe_sparsity(recipe: Recipe) -> float:
    """The sparsity a recipe's prune stage aims for (structured 2:4 is always one half)."""
    for stage in recipe.stages:
        if stage.type == "prune":
            return 0.5 if getattr(stage.params, "structured_2x4", False) else float(stage.params.target_sparsity)
    return 0.0


def architecture_key(alpha: float, image_size: int, num_classes: int, recipe: Recipe, seed: int) -> str:
    """Everything that decides the probe's bytes: architecture, convert settings, seed, TF version."""
    from importlib.metadata import version

    convert = recipe.convert.params
    # No qat flag: a random model is never QAT-wrapped, so int8-qat's probe is int8-ptq's file.
    fields = {"alpha": float(alpha), "image_size": int(image_size), "classes": int(num_classes),
              "mode": convert.mode, "io_dtype": convert.io_dtype,
              "calibration_samples": convert.calibration_samples if convert.mode == "int8" else 0,
              "seed": int(seed), "tensorflow": version("tensorflow")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def latency_key(sha256: str, profile, threads: int | None) -> str:
    """The device is its profile name and address: a profile re-pointed at another board is another device."""
    return (f"latency:{sha256[:16]}:{profile.name}@{profile.address}:{profile.runtime}:{profile.delegate}:"
            f"t{threads or profile.threads}")


def _build_probe(directory: Path, alpha: float, image_size: int, recipe: Recipe, splits, seed: int,
                 lineage: dict) -> Path:
    """Convert a seeded random-weight model of this architecture with the recipe's convert stage."""
    from edgekit.compat import keras
    from edgekit.compress.convert import convert
    from edgekit.model import ModelSpec, build_classifier

    keras.utils.set_random_seed(seed)
    model = build_classifier(ModelSpec(len(splits.labels), image_size, alpha))
    params = recipe.convert.params
    calibration = None
    if params.mode == "int8":  # a random model is not QAT-wrapped: int8 needs calibration like int8-ptq
        count = max(params.calibration_samples, 16)
        calibration = calibration_images(splits.train, image_size, count, seed=seed)
        params = type(params)(mode="int8", calibration_samples=count, io_dtype=params.io_dtype)
    content = convert(model, params, calibration)
    write_bytes_atomic(directory / PROBE_FILE, content)
    contract = manifests.ModelContract(
        file=PROBE_FILE, input_size=(image_size, image_size, 3), labels=tuple(splits.labels),
        architecture={"family": "MobileNetV2", "alpha": alpha}, weights=f"random (seed {seed})")
    manifests.write(directory, manifests.ProbeManifest(
        name=f"probe-{directory.name}", model=contract, dataset=splits.record, recipe=recipe,
        recipe_hash=manifests.recipe_hash(recipe.as_dict()), tflite={**parse(content).describe(), "size": len(content)},
        lineage=lineage), [PROBE_FILE])
    return directory / PROBE_FILE


def _time_on_device(model_path: Path, profile, settings) -> BenchRow:
    """One bench row for the probe, through the same path as `edgekit bench`."""

    result = run_bench(collect_variants([model_path]), profile, settings)
    if result.device.get("error"):
        raise DeviceUnreachable(f"device {profile.name} ({profile.address}): {result.device['error']}")
    row = result.rows[0]
    if row.status == "error" or not (row.latency_ms and row.latency_ms.p90):
        raise EdgekitError(f"latency probe {model_path}: {row.error or 'no latency measured'}")
    return row


def probe_latency(study, probes_dir: Path, alpha: float, image_size: int, recipe: Recipe, splits, profile,
                  settings, seed: int, lineage: dict) -> Probe:
    """The probe's p90 on the device, from the study's cache when this architecture was timed before."""
    arch = architecture_key(alpha, image_size, len(splits.labels), recipe, seed)
    threads = settings.threads[0]
    attrs = study.user_attrs
    known = attrs.get(f"probe:{arch}")
    if known:
        cached = attrs.get(latency_key(known["sha256"], profile, threads))
        if cached:
            return Probe(known["sha256"], known["size"], cached["p90_ms"], cached["p50_ms"], cached.get("runtime"),
                         True, str(probes_dir / arch))
    directory = probes_dir / arch
    path = directory / PROBE_FILE
    if not (path.is_file() and (directory / MANIFEST).is_file()):
        log.info("probe: converting a random-weight alpha %s, %d px model (%s)", alpha, image_size,
                 recipe.convert.params.mode)
        path = _build_probe(directory, alpha, image_size, recipe, splits, seed, lineage)
    record = manifests.read(directory, manifests.ProbeManifest).files[PROBE_FILE]
    row = _time_on_device(path, profile, settings)
    entry = {"p90_ms": row.latency_ms.p90, "p50_ms": row.latency_ms.p50, "runtime": row.ran.runtime,
             "runtime_version": row.ran.runtime_version, "n": row.latency_ms.n}
    study.set_user_attr(f"probe:{arch}", {"sha256": record.sha256, "size": record.size})
    study.set_user_attr(latency_key(record.sha256, profile, threads), entry)
    return Probe(record.sha256, record.size, entry["p90_ms"], entry["p50_ms"], entry["runtime"], False,
                 str(directory))
