"""The numbers `edgekit tune` takes, checked before Optuna or TensorFlow load and before a study exists."""

from __future__ import annotations

from edgekit.bench.run import BenchSettings
from edgekit.config import ACCURACY, LATENCY_MS, Range

TRIALS = Range(1, 100_000, "trials")
TIMEOUT_S = Range(0, 30 * 86_400, "seconds", integer=False, above=True)
SIZE_KB = Range(0, 10_000_000, "KB", integer=False, above=True)


def check_options(*, trials: int | None = None, timeout: float | None = None, max_latency_ms: float | None = None,
                  max_size_kb: float | None = None, min_accuracy: float | None = None, runs: int = 50,
                  warmup: int = 5, min_seconds: float = 2.0, threads: int | None = None, **_) -> None:
    """Every number in its range, one line naming the option otherwise (the rest of `options` is the
    study's own business: device, data, space)."""
    TRIALS.check(trials, "--trials")
    TIMEOUT_S.check(timeout, "--timeout")
    LATENCY_MS.check(max_latency_ms, "--max-latency-ms")
    SIZE_KB.check(max_size_kb, "--max-size-kb")
    ACCURACY.check(min_accuracy, "--min-accuracy")
    BenchSettings(threads=(threads,), runs=runs, warmup=warmup, min_seconds=min_seconds).check()
