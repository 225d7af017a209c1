"""The numbers `edgekit tune` takes, checked before Optuna or TensorFlow load and before a study exists."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgekit.bench.run import BenchSettings
from edgekit.config import ACCURACY, LATENCY_MS, Range, validate

TRIALS = Range(1, 100_000, "trials")
TIMEOUT_S = Range(0, 30 * 86_400, "seconds", integer=False, above=True)
SIZE_KB = Range(0, 10_000_000, "KB", integer=False, above=True)


@dataclass(frozen=True)
class TuneLimits:
    """What a study is asked to stay within; None is unset (the timing settings are `BenchSettings`')."""

    trials: int | None = TRIALS.field(None)
    timeout: float | None = TIMEOUT_S.field(None)
    max_latency_ms: float | None = LATENCY_MS.field(None)
    max_size_kb: float | None = SIZE_KB.field(None)
    min_accuracy: float | None = ACCURACY.field(None)


def check_options(*, runs: int = 50, warmup: int = 5, min_seconds: float = 2.0, threads: int | None = None,
                  **options) -> None:
    """Every number in its range, one line naming the option otherwise (the rest of `options` is the
    study's own business: device, data, space)."""
    names = {f.name for f in dataclasses.fields(TuneLimits)}
    validate(TuneLimits(**{name: value for name, value in options.items() if name in names}))
    BenchSettings(threads=(threads,), runs=runs, warmup=warmup, min_seconds=min_seconds).check()
