"""Is one variant really slower than another here? Interleaved rounds and a confidence interval on the ratio.

Two variants timed in separate runs differ by the machine's drift between the runs as well as by the
models. On a shared CPU a 1.08-1.14x difference of a few microseconds is inside that drift, so a point
ratio of two p50s cannot decide "slower". The runner's `bench --versus BASELINE` alternates short rounds of
the two models; the ratio of their medians is taken per round, and a Student-t interval on the mean log
ratio says whether the difference is larger than the rounds' own spread.
"""

from __future__ import annotations

import math

# Two-sided 95% Student-t quantiles by degrees of freedom (1..30); beyond 30 the normal 1.96 is within 2%.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)
MIN_ROUNDS = 3


def t95(df: int) -> float:
    return _T95[df - 1] if df <= len(_T95) else 1.96


def ratio_interval(rounds_ms: list[list[float]]) -> dict | None:
    """Geometric-mean ratio (model / baseline) over the rounds and its 95% interval; None if too few rounds."""
    logs = [math.log(a / b) for a, b in rounds_ms if a > 0 and b > 0]
    if len(logs) < MIN_ROUNDS:
        return None
    n = len(logs)
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return {"ratio": math.exp(mean), "ci95": [math.exp(mean - half), math.exp(mean + half)], "rounds": n}


def verdict(interval: dict | None, margin: float) -> str:
    """`slower`, `faster` or `no measurable difference`: slower only when the whole interval is above 1 and
    the ratio itself exceeds `margin` (a real but tiny slowdown is no reason to avoid a variant)."""
    if interval is None:
        return "unknown"
    low, high = interval["ci95"]
    if low > 1.0 and interval["ratio"] > margin:
        return "slower"
    if high < 1.0:
        return "faster"
    return "no measurable difference"
