"""One `edgekit bench` invocation: check everything, time every model on the target, write the results.

The CLI and `edgekit tune` both come through here, so a tuned candidate is measured exactly like a
benchmarked variant.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.artifacts import check_writable, edgekit_home
from edgekit.bench.advice import advise
from edgekit.bench.report import write_results
from edgekit.bench.run import BenchModel, BenchResult, BenchSettings, collect_variants, run_bench
from edgekit.config import ACCURACY, LATENCY_MS
from edgekit.devices import load_profile
from edgekit.manifests import MANIFEST, ParentRef


@dataclass
class BenchSession:
    device: str
    out_dir: Path
    result: BenchResult
    advice: dict


def results_home(first: Path, variant: BenchModel) -> Path:
    """Where a bench's `<device>-<time>` folders go: beside the first run or variant edgekit made; under
    $EDGEKIT_HOME for a model edgekit did not make, whose folder may be anywhere (site-packages, a read-only
    mount, a colleague's checkout)."""
    anchor = first if first.is_dir() else first.parent
    if (anchor / MANIFEST).is_file():
        return anchor / "bench"
    return edgekit_home() / "bench" / f"{variant.path.stem}-{variant.sha256[:12]}"


def bench_session(targets: list[Path], device: str, settings: BenchSettings, *, out: Path | None = None,
                  max_latency_ms: float | None = None, min_accuracy: float | None = None) -> BenchSession:
    """Benchmark `targets` (runs, variants or .tflite files) on `device` and write results beside them."""

    LATENCY_MS.check(max_latency_ms, "--max-latency-ms")
    ACCURACY.check(min_accuracy, "--min-accuracy")
    profile = load_profile(device)
    if settings.threads == (None,):
        settings = dataclasses.replace(settings, threads=(profile.threads,))
    settings.check()
    variants = collect_variants(targets)
    stamp = f"{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(out) if out else results_home(targets[0], variants[0]) / stamp
    check_writable(out_dir)
    if not profile.is_remote:  # the local target's work directory lives in $EDGEKIT_HOME/targets
        check_writable(Path(profile.remote_workdir).expanduser())
    result = run_bench(variants, profile, settings)
    result.rows, advice = advise(result.rows, max_latency_ms, min_accuracy)
    parents = [ParentRef(path=str(v.path.resolve()), sha256=v.sha256, kind="variant" if v.manifest else None,
                         file=v.path.name) for v in variants]
    recorded = {k: getattr(settings, k) for k in ("threads", "runs", "warmup", "min_seconds", "delegate",
                                                  "accuracy_samples")}
    recorded.update(images=str(settings.images) if settings.images else None,
                    runtime=settings.runtime or profile.runtime)
    write_results(out_dir, profile.name, result, recorded, parents, advice)
    return BenchSession(profile.name, out_dir, result, advice)
