"""`edgekit bench`: time every variant on a target with the on-device runner and join it with accuracy.

The same runner measures on every target (desktop, Pi over SSH, Coral), fed with real validation images.
Each timed file's sha256 is checked against its manifest before timing and again on the device after the
copy, and a sample of the outputs recorded during timing is compared with the accuracy pass, so a row's
accuracy and latency are known to describe the same bytes. A failed variant becomes an error row.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import manifests
from edgekit.artifacts import sha256_file
from edgekit.devices import DeviceProfile, runner_path
from edgekit.errors import EdgekitError
from edgekit.transport.targets import Target, make_target

log = logging.getLogger(__name__)

BENCH_IMAGES = "bench_inputs.npz"
OUTPUT_TOLERANCE = 1e-4  # float outputs from another build of the same runtime may differ in the last bits


@dataclass
class BenchModel:
    """A .tflite file to benchmark, with its variant manifest when it has one (any .tflite works)."""

    name: str
    path: Path
    manifest: manifests.VariantManifest | None = None
    problem: str | None = None

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)


@dataclass(frozen=True)
class BenchSettings:
    threads: tuple[int | None, ...] = (None,)
    runs: int = 50
    warmup: int = 5
    min_seconds: float = 2.0
    max_images: int = 64
    delegate: str | None = None
    timeout_s: float = 600
    accept_new_host_key: bool = False


@dataclass
class BenchResult:
    device: dict
    rows: list[dict] = field(default_factory=list)
    partial: bool = False


def collect_variants(paths: list[Path]) -> list[BenchModel]:
    """Expand run directories into their compressed variants; keep explicit .tflite files as given."""
    variants: list[BenchModel] = []
    for path in map(Path, paths):
        if path.is_dir() and isinstance(manifests.read_optional(path), manifests.RunManifest):
            found = sorted(path.glob("compressed/*/model.tflite"))
            if not found:
                raise EdgekitError(f"{path}: no compressed variants; run `edgekit compress {path} --int8` first")
            variants += [_variant(p) for p in found]
        elif path.is_dir():
            variants.append(_variant(path / "model.tflite"))
        elif path.suffix == ".tflite":
            variants.append(_variant(path))
        else:
            raise EdgekitError(f"{path}: not a run directory, variant directory or .tflite file")
    return variants


def _variant(path: Path) -> BenchModel:
    if not path.is_file():
        raise EdgekitError(f"{path}: no such model file")
    directory = path.parent
    manifest = manifests.read_optional(directory)
    if not isinstance(manifest, manifests.VariantManifest) or path.name not in manifest.files:
        return BenchModel(path.stem, path)
    name = manifest.name or path.stem
    try:
        manifests.verify_files(directory, manifest, [path.name])
    except EdgekitError as exc:
        return BenchModel(name, path, manifest, problem=str(exc))
    return BenchModel(name, path, manifest)


def bench_inputs(variant: BenchModel, out: Path, count: int) -> np.ndarray | None:
    """Validation images at the model's size, saved as .npz for the runner; None without a dataset."""
    from edgekit.data import load_dataset, load_pixels, spec_from_description

    if variant.manifest is None or not variant.manifest.dataset:
        return None
    size = variant.manifest.model.image_size
    splits = load_dataset(spec_from_description(variant.manifest.dataset, size))
    images = splits.validation.subset(np.arange(min(count, len(splits.validation))))
    pixels = load_pixels(images, size)
    np.savez(out, x=pixels)
    return pixels


def reference_outputs(path: Path, pixels: np.ndarray, k: int) -> np.ndarray:
    """What the accuracy pass computes for the first k bench inputs (same file, same code path)."""
    from edgekit.evaluate import TFLitePredictor

    predictor = TFLitePredictor(path)
    return predictor.predict(pixels[:k])


def _compare_outputs(report: dict, reference: np.ndarray, dequantize) -> dict:
    recorded = report.get("outputs") or []
    if not recorded or reference is None:
        return {"checked": 0}
    raw = np.asarray([o["output"] for o in recorded], dtype=np.float64).reshape(len(recorded), -1)
    ours = dequantize(raw)
    expected = reference[[o["index"] for o in recorded]]
    diff = float(np.abs(ours - expected).max())
    argmax_equal = bool(np.all(ours.argmax(axis=1) == expected.argmax(axis=1)))
    return {"checked": len(recorded), "max_abs_diff": diff, "argmax_equal": argmax_equal,
            "equal": argmax_equal and diff <= OUTPUT_TOLERANCE}


def _dequantizer(path: Path):
    """Raw outputs the runner recorded → real numbers, with the file's own output quantization."""
    from edgekit.tflite import dequantizer, parse_file

    return dequantizer(parse_file(path).outputs[0].as_dict())


def _row(variant: BenchModel, profile: DeviceProfile, threads: int | None, delegate: str | None) -> dict:
    accuracy = variant.manifest.metrics.validation.accuracy if variant.manifest else None
    return {"variant": variant.name, "path": str(variant.path), "device": profile.name, "threads": threads,
            "delegate": delegate or "none", "size": variant.path.stat().st_size,
            "accuracy": accuracy, "status": "ok", "error": None}


def _fill_row(row: dict, report: dict, check: dict, profile: DeviceProfile) -> None:
    latency = report.get("latency_ms") or {}
    runtime = report.get("runtime") or {}
    row.update(
        runtime=runtime.get("name"), runtime_version=runtime.get("version"),
        threads=report.get("threads", row["threads"]), latency_ms=latency, n=latency.get("n"),
        throughput_ips=report.get("throughput_ips"), peak_rss_mb=report.get("peak_rss_mb"),
        load_ms=report.get("load_ms"), first_ms=report.get("first_ms"), model_sha256=report.get("model_sha256"),
        output_check=check,
    )
    if report.get("delegate_error"):
        row.update(status="error", error=report["delegate_error"])
    elif check.get("checked") and not check.get("argmax_equal"):
        row.update(status="suspect", error="outputs recorded while timing differ from the accuracy pass")
    reference = (profile.reference_latency_ms or {}).get(row["variant"])
    if reference and latency.get("p50") and not 0.5 <= latency["p50"] / reference <= 2.0:
        row["warning"] = f"p50 {latency['p50']:.2f} ms is far from the reference {reference} ms for {profile.name}"


def _delegate_runs(profile: DeviceProfile, settings: BenchSettings) -> list[str | None]:
    """CPU rows always; an Edge TPU row as well where the profile or the user asks for one."""
    delegate = settings.delegate or (None if profile.delegate == "none" else profile.delegate)
    return [None] if delegate is None else [None, delegate]


def run_bench(variants: list[BenchModel], profile: DeviceProfile, settings: BenchSettings) -> BenchResult:
    target = make_target(profile, accept_new_host_key=settings.accept_new_host_key)
    result = BenchResult(device={"profile": profile.name, "address": getattr(profile, "address", None)})
    try:
        target.prepare()
        target.put(runner_path(), "edgekit_runner.py")
    except EdgekitError as exc:
        result.partial = True
        result.device["error"] = str(exc)
        for variant in variants:
            row = _row(variant, profile, None, None)
            row.update(status="error", error=str(exc))
            result.rows.append(row)
        return result
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as scratch:
        for variant in variants:
            _bench_variant(target, variant, profile, settings, Path(scratch), result)
    result.partial = any(row["status"] == "error" for row in result.rows)
    return result


def _bench_variant(target: Target, variant: BenchModel, profile: DeviceProfile, settings: BenchSettings,
                   scratch: Path, result: BenchResult) -> None:
    delegates = _delegate_runs(profile, settings)
    if variant.problem:
        row = _row(variant, profile, None, None)
        row.update(status="error", error=variant.problem)
        result.rows.append(row)
        return
    try:
        inputs = scratch / f"{variant.name}-{BENCH_IMAGES}"
        pixels = bench_inputs(variant, inputs, settings.max_images)
        if pixels is None:
            raise EdgekitError(f"{variant.path}: no manifest naming its dataset, so no real inputs to time with; "
                               "benchmark a variant made by `edgekit compress`")
        reference = reference_outputs(variant.path, pixels, 16)
        remote_model = f"models/{sha256_file(variant.path)[:12]}.tflite"
        target.put(variant.path, remote_model)
        target.put(inputs, BENCH_IMAGES)
    except EdgekitError as exc:
        for delegate in delegates:
            row = _row(variant, profile, None, delegate)
            row.update(status="error", error=str(exc))
            result.rows.append(row)
        return
    for delegate in delegates:
        for threads in settings.threads:
            row = _row(variant, profile, threads, delegate)
            args = ["bench", remote_model, "--images", BENCH_IMAGES, "--runs", settings.runs, "--warmup",
                    settings.warmup, "--min-seconds", settings.min_seconds, "--max-images", settings.max_images]
            if threads:
                args += ["--threads", threads]
            if delegate:
                args += ["--delegate", delegate, "--require-delegate"]
            started = time.time()
            try:
                report = target.run_runner(args, timeout=settings.timeout_s, check=False)
                if report.get("error") and not report.get("latency_ms"):
                    raise EdgekitError(_delegate_message(delegate, report["error"]))
                _fill_row(row, report, _compare_outputs(report, reference, _dequantizer(variant.path)),
                          profile)
            except EdgekitError as exc:
                row.update(status="error", error=str(exc))
            row["bench_wall_s"] = round(time.time() - started, 2)
            result.rows.append(row)


def _delegate_message(delegate: str | None, error: str) -> str:
    """Lead with '<delegate>: not available (reason)' when that is what went wrong."""
    if not delegate:
        return error
    found = re.search(rf"{re.escape(delegate)}: not available \(.*?\)(?=;|$)", error)
    return found.group(0) if found else f"{delegate}: not available ({error})"
