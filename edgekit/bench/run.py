"""`edgekit bench`: time every variant on a target with the on-device runner and join it with accuracy.

The same runner measures on every target (desktop, Pi over SSH, Coral), fed with real validation images.
Each timed file's sha256 is checked against its manifest before timing and again on the device after the
copy, and a sample of the outputs recorded during timing is compared with the accuracy pass, so a row's
accuracy and latency are known to describe the same bytes. A failed variant becomes an error row.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import manifests
from edgekit.artifacts import recover_swaps, sha256_file, visible_glob
from edgekit.bench import accuracy, inputs
from edgekit.bench.rows import BenchRow, DeviceAccuracy, Placement, measured
from edgekit.config import THREADS, Check, Range, from_mapping, validate
from edgekit.data import load_dataset, load_pixels
from edgekit.devices import DeviceProfile, runner_path
from edgekit.errors import EdgekitError
from edgekit.runner import dequantizer
from edgekit.tflite import parse_file
from edgekit.transport.targets import Target, make_target

log = logging.getLogger(__name__)

BENCH_IMAGES = "bench_inputs.npz"
HOST_RUNTIME = "litert"  # what the accuracy pass in `edgekit compress` ran on
# What a user could mean (the runner has its own, looser caps): beyond these a bench would run for days.
RUNS = Range(1, 100_000, "timed runs")
WARMUP = Range(0, 10_000, "runs")
MIN_SECONDS = Range(0, 3600, "seconds", integer=False)
ACCURACY_SAMPLES = Range(1, 10_000_000, "images")


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


THREAD_COUNTS = Check(f"{THREADS.text} (or unset)",
                      lambda counts: all(t is None or t in THREADS for t in counts) and len(counts) <= 16)
PAIRED_ROUNDS = Check("0 (off) or 2..1000", lambda n: n in Range(0, 1000) and n != 1)
IMAGE_FOLDER = Check("an existing folder of images", lambda path: Path(path).is_dir())


@dataclass(frozen=True)
class BenchSettings:
    threads: tuple[int | None, ...] = THREAD_COUNTS.field((None,))
    runs: int = RUNS.field(50)
    warmup: int = WARMUP.field(5)
    min_seconds: float = MIN_SECONDS.field(2.0)
    max_images: int = 64
    delegate: str | None = None
    timeout_s: float = 600
    accept_new_host_key: bool = False
    runtime: str | None = None  # None: the profile's (auto: the first interpreter the device has)
    images: Path | None = IMAGE_FOLDER.field(None)  # a folder of images for models without an edgekit manifest
    # None: the whole validation split, and only when runtimes differ
    accuracy_samples: int | None = ACCURACY_SAMPLES.field(None)
    paired_rounds: int = PAIRED_ROUNDS.field(10)  # interleaved rounds of each variant against float32 (0: none)

    def check(self) -> None:
        """Impossible settings are one line (naming the option) before anything is copied to a device."""
        validate(self)


@dataclass
class BenchResult:
    device: dict
    rows: list[BenchRow] = field(default_factory=list)
    partial: bool = False


def collect_variants(paths: list[Path]) -> list[BenchModel]:
    """Expand run directories into their compressed variants; keep explicit .tflite files as given."""
    variants: list[BenchModel] = []
    for path in map(Path, paths):
        if path.is_dir() and isinstance(manifests.read_optional(path), manifests.RunManifest):
            recover_swaps(path / "compressed")
            found = visible_glob(path, "compressed/*/model.tflite")
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

    if variant.manifest is None or not variant.manifest.dataset:
        return None
    size = variant.manifest.model.image_size
    splits = load_dataset(variant.manifest.dataset.reload_spec)
    images = splits.validation.subset(np.arange(min(count, len(splits.validation))))
    pixels = load_pixels(images, size)
    np.savez(out, x=pixels)
    return pixels


def make_feed(variant: BenchModel, out: Path, settings: BenchSettings) -> inputs.Feed:
    """Validation images for edgekit's variants, else `--images DIR`, else generated tensors."""
    model = parse_file(variant.path)
    if settings.images:
        return inputs.folder_images(model, settings.images, out, settings.max_images)
    pixels = bench_inputs(variant, out, settings.max_images)
    if pixels is not None:
        return inputs.Feed("--images", out, f"{len(pixels)} validation images", pixels=pixels)
    return inputs.generated(model, out, min(settings.max_images, 16))


def _compare_outputs(report: dict, reference: np.ndarray, output: dict, variant_path: Path | None = None,
                     feed=None) -> dict:
    """The outputs the runner recorded while timing against LiteRT on the host, in quantization steps.

    A runner that reports its invoke `sequence` is compared with the host replaying that sequence, so a
    stateful model's outputs after warm-up and earlier samples meet the same history on both sides.
    """
    recorded = report.get("outputs") or []
    if not recorded or reference is None:
        return {"checked": 0}
    sequence = report.get("sequence")
    if variant_path is not None and sequence and all("position" in o for o in recorded):
        reference = inputs.replayed_outputs(variant_path, feed, [int(n) for n in sequence])
        rows = [o["position"] for o in recorded]
    else:
        rows = [o["index"] for o in recorded]
    width = min(len(recorded[0]["output"]), reference.shape[1])
    raw = np.asarray([o["output"][:width] for o in recorded], dtype=np.float64)
    expected = reference[rows][:, :width]
    return accuracy.compare(dequantizer(output)(raw), expected, output)


def runtime_args(profile: DeviceProfile, settings: BenchSettings) -> list:
    """`--runtime NAME` when the user or the profile names one: the runner then uses exactly that."""
    runtime = settings.runtime or profile.runtime
    return [] if runtime in (None, "auto") else ["--runtime", runtime]


def _row(variant: BenchModel, profile: DeviceProfile, threads: int | None, delegate: str | None) -> BenchRow:
    host = variant.manifest.metrics.validation.accuracy if variant.manifest and variant.manifest.metrics else None
    ran = Placement(device=profile.name, delegate=delegate or "none", threads=threads, threads_requested=threads)
    return BenchRow(variant=variant.name, path=str(variant.path), ran=ran, size=variant.path.stat().st_size,
                    mode=convert_mode(variant), accuracy=host,
                    accuracy_source="host LiteRT, validation split" if host is not None else "not measured")


def convert_mode(variant: BenchModel) -> str | None:
    """float32, float16, dynamic or int8 from the variant's recipe; None for a model edgekit did not make."""
    recipe = variant.manifest.recipe if variant.manifest else None
    modes = [stage.params.mode for stage in (recipe.stages if recipe else ()) if stage.type == "convert"]
    return modes[-1] if modes else None


def _judged(row: BenchRow, check: dict, profile: DeviceProfile) -> BenchRow:
    """A measured row's status and warning: outputs beyond tolerance are drift, a far-off p50 is named."""
    if row.status == "ok" and accuracy.verdict(check):
        row = dataclasses.replace(row, status="drift", error=accuracy.verdict(check))
    reference = (profile.reference_latency_ms or {}).get(row.variant)
    p50 = row.latency_ms.p50 if row.latency_ms else None
    if reference and p50 and not 0.5 <= p50 / reference <= 2.0:
        row = dataclasses.replace(row, warning=f"p50 {p50:.2f} ms is far from the reference {reference} ms for "
                                               f"{profile.name}")
    return row


def host_runtime() -> dict:
    """What the host's accuracy pass ran with: the runtime, its version and the machine."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("ai-edge-litert")
    except PackageNotFoundError:
        found = None
    return {"runtime": HOST_RUNTIME, "runtime_version": found, "machine": platform.machine()}


def differs_from_host(row: BenchRow, host: dict | None = None) -> list[str]:
    """How the row's device computes differently from the host's accuracy pass (empty: the same way).

    Only the runtime's name used to count, so LiteRT 2.1 on a Pi against LiteRT 2.3 on the host got no
    accuracy pass although its kernels differ; the version, a delegate and the architecture count too.
    """
    host = host or host_runtime()
    machine = row.environment.machine if row.environment else None
    ran, reasons = row.ran, []
    if ran.runtime != host["runtime"]:
        reasons.append(f"runtime {ran.runtime} (host {host['runtime']})")
    elif host["runtime_version"] and ran.runtime_version != host["runtime_version"]:
        reasons.append(f"{ran.runtime} {ran.runtime_version} (host {host['runtime_version']})")
    if ran.delegate != "none":
        reasons.append(f"delegate {ran.delegate}")
    if machine and machine != host["machine"]:
        reasons.append(f"{machine} (host {host['machine']})")
    return reasons


def _wants_device_accuracy(row: BenchRow, variant: BenchModel, settings: BenchSettings) -> bool:
    """When the device computes differently from the host's pass (differs_from_host), or the user asked."""
    if row.status == "error" or variant.manifest is None or not variant.manifest.dataset:
        return False
    return bool(settings.accuracy_samples) or bool(differs_from_host(row))


def _add_device_accuracy(row: BenchRow, found: DeviceAccuracy) -> BenchRow:
    """Put the device's accuracy beside the host's; outputs beyond tolerance make the row `drift`."""
    row = dataclasses.replace(row, device_accuracy=found.device_accuracy, accuracy_check=found)
    problem = accuracy.verdict(dataclasses.asdict(found.output_check))
    if problem and row.status == "ok":
        row = dataclasses.replace(row, status="drift", error=f"{found.device_runtime}: {problem}")
    return row


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
        result.rows += [dataclasses.replace(_row(variant, profile, None, None), status="error", error=str(exc))
                        for variant in variants]
        return result
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as scratch:
        prepared = Prepared(target, settings, Path(scratch), _float32_baseline(variants, settings))
        for variant in variants:
            _bench_variant(prepared, variant, profile, result)
    result.partial = any(row.status == "error" for row in result.rows)
    found = [row.environment for row in result.rows if row.environment]
    if found:  # the device as its own runner reported it, not the host's versions
        result.device["environment"] = dataclasses.asdict(found[0])
    return result


def _float32_baseline(variants: list[BenchModel], settings: BenchSettings) -> BenchModel | None:
    """The float32 variant the others are timed against in interleaved rounds, when the call has one."""
    if settings.paired_rounds < 2 or len(variants) < 2:
        return None
    return next((v for v in variants if convert_mode(v) == "float32" and not v.problem), None)


@dataclass
class Prepared:
    """Each variant's inputs made and copied once, so the float32 baseline can be used before its own turn."""

    target: Target
    settings: BenchSettings
    scratch: Path
    baseline: BenchModel | None = None
    done: dict = field(default_factory=dict)

    def get(self, variant: BenchModel):
        """(remote model name, remote inputs name, feed, reference outputs, output info)."""
        if variant.path not in self.done:
            self.done[variant.path] = _prepare(self.target, variant, self.settings, self.scratch)
        return self.done[variant.path]

    def versus_args(self, variant: BenchModel) -> list:
        """`--versus` the float32 baseline for every other variant; nothing when it cannot be prepared."""
        if self.baseline is None or variant.path == self.baseline.path:
            return []
        try:
            remote_model, remote_inputs, feed, _, _ = self.get(self.baseline)
        except EdgekitError as exc:
            log.warning("no interleaved rounds against %s: %s", self.baseline.name, exc)
            self.baseline = None
            return []
        flag = "--versus-images" if feed.flag == "--images" else "--versus-inputs"
        return ["--versus", remote_model, flag, remote_inputs, "--rounds", self.settings.paired_rounds]


def _prepare(target: Target, variant: BenchModel, settings: BenchSettings, scratch: Path):
    """Inputs made and copied, reference outputs computed: (remote model name, remote inputs name, feed,
    reference, output)."""
    if variant.problem:
        raise EdgekitError(variant.problem)
    feed = make_feed(variant, scratch / f"{variant.name}-{BENCH_IMAGES}", settings)
    reference = inputs.reference_outputs(variant.path, feed, 16)
    remote_model = f"models/{sha256_file(variant.path)[:12]}.tflite"
    target.put(variant.path, remote_model)
    # named by content: two bench processes on one device never overwrite each other's inputs
    remote_inputs = f"inputs/{sha256_file(feed.path)[:16]}.npz"
    target.put(feed.path, remote_inputs)
    return remote_model, remote_inputs, feed, reference, accuracy.output_info(variant.path)


def _bench_variant(prepared: Prepared, variant: BenchModel, profile: DeviceProfile, result: BenchResult) -> None:
    target, settings, scratch = prepared.target, prepared.settings, prepared.scratch
    delegates = _delegate_runs(profile, settings)
    try:
        remote_model, remote_inputs, feed, reference, output = prepared.get(variant)
    except EdgekitError as exc:
        result.rows += [dataclasses.replace(_row(variant, profile, None, delegate), status="error", error=str(exc))
                        for delegate in delegates]
        return
    for delegate in delegates:
        found = None  # the device accuracy pass, once per delegate: threads do not change the answers
        for threads in settings.threads:
            row = dataclasses.replace(_row(variant, profile, threads, delegate), inputs=feed.description)
            model_args = runtime_args(profile, settings) + (["--threads", threads] if threads else [])
            model_args += ["--delegate", delegate, "--require-delegate"] if delegate else []
            args = ["bench", remote_model, feed.flag, remote_inputs, "--runs", settings.runs, "--warmup",
                    settings.warmup, "--min-seconds", settings.min_seconds, "--max-images", settings.max_images,
                    *prepared.versus_args(variant)]
            started = time.time()
            try:
                report = target.run_runner(args + model_args, timeout=settings.timeout_s, check=False)
                if report.get("error") and not report.get("latency_ms"):
                    raise EdgekitError(_delegate_message(delegate, report["error"]))
                check = _compare_outputs(report, reference, output, variant.path, feed)
                baseline = prepared.baseline.name if prepared.baseline else None
                row = measured(row, report, check, f"{target.name}: the runner's bench report", baseline)
                row = _judged(row, check, profile)
                if found is None and _wants_device_accuracy(row, variant, settings):
                    found = accuracy.device_accuracy(target, variant, remote_model,
                                                     [a for a in model_args if a != "--require-delegate"],
                                                     scratch, settings.accuracy_samples, settings.timeout_s)
                if found is not None:
                    row = _add_device_accuracy(row, from_mapping(DeviceAccuracy, found, "device accuracy"))
            except EdgekitError as exc:
                row = dataclasses.replace(row, status="error", error=str(exc))
            row = dataclasses.replace(row, bench_wall_s=round(time.time() - started, 2))
            result.rows.append(row)
            p50 = row.latency_ms.p50 if row.latency_ms else None
            log.info("bench %s on %s (%s, threads %s): %s", variant.name, profile.name, delegate or "cpu",
                     row.ran.threads or "default", f"p50 {p50:.3f} ms" if p50 is not None else row.status)


def _delegate_message(delegate: str | None, error: str) -> str:
    """Lead with '<delegate>: not available (reason)' when that is what went wrong."""
    if not delegate:
        return error
    found = re.search(rf"{re.escape(delegate)}: not available \(.*?\)(?=;|$)", error)
    return found.group(0) if found else f"{delegate}: not available ({error})"
