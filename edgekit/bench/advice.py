"""What to ship, from a bench table: the Pareto-optimal rows, variants slower than float32, a pick.

Compression does not always pay: on an x86 CPU the dynamic-range variant took 13.5 ms against 7.4 ms
for float32 at 224 px. The table alone leaves the reader to notice; this says it. Rows are compared
only within one device, thread count and delegate, since those change latency more than variants do.
"Slower" is decided from interleaved rounds against float32 (`edgekit.bench.paired`), not from two p50s
measured in separate runs: those differ by the machine's drift as much as by the model.
"""

from __future__ import annotations

import dataclasses

from edgekit.bench.paired import verdict
from edgekit.bench.rows import BenchRow, VsFloat32

SLOWER_MARGIN = 1.05  # a confirmed slowdown smaller than 5% is no reason to avoid a variant


def _latency(row: BenchRow) -> float | None:
    return row.latency_ms.p50 if row.latency_ms else None


def row_accuracy(row: BenchRow) -> float | None:
    """The device's own accuracy where it was measured, else the host's."""
    return row.device_accuracy if row.device_accuracy is not None else row.accuracy


def _label(row: BenchRow) -> str:
    return f"{row.variant} ({row.ran.device}, threads {row.ran.threads or 'default'}, delegate {row.ran.delegate})"


def _groups(rows: list[BenchRow]) -> dict[tuple, list[int]]:
    """Positions of the timed rows, by device, threads and delegate."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row.status in ("ok", "drift") and _latency(row) is not None:
            groups.setdefault((row.ran.device, row.ran.threads, row.ran.delegate), []).append(i)
    return groups


def _dominated(row: BenchRow, others: list[BenchRow]) -> bool:
    lat, acc = _latency(row), row_accuracy(row)
    return any(_latency(o) <= lat and row_accuracy(o) >= acc and (_latency(o) < lat or row_accuracy(o) > acc)
               for o in others)


def _is_float32(row: BenchRow) -> bool:
    return row.mode == "float32" or (row.mode is None and row.variant == "float32")


def advise(rows: list[BenchRow], max_latency_ms: float | None = None, min_accuracy: float | None = None
           ) -> tuple[list[BenchRow], dict]:
    """The rows marked (`pareto`, `vs_float32`, `slower_than_float32`, `recommended`) and the advice."""
    rows, pareto, slower, unclear = list(rows), [], [], []
    for group in _groups(rows).values():
        ranked = [i for i in group if row_accuracy(rows[i]) is not None]
        for i in ranked:
            front = not _dominated(rows[i], [rows[j] for j in ranked if j != i])
            rows[i] = dataclasses.replace(rows[i], pareto=front)
            if front:
                pareto.append(_label(rows[i]))
        baseline = next((rows[i] for i in group if _is_float32(rows[i])), None)
        for i in group:
            if baseline is not None and rows[i] is not baseline:
                rows[i] = _against_float32(rows[i], baseline, slower, unclear)
    advice = {"pareto": pareto, "slower_than_float32": slower, "no_measurable_difference": unclear,
              "recommended": None}
    if max_latency_ms is not None or min_accuracy is not None:
        found, best = _recommend(rows, max_latency_ms, min_accuracy)
        advice.update(found)
        if best is not None:
            rows[best] = dataclasses.replace(rows[best], recommended=True)
    return rows, advice


def _paired_with(row: BenchRow, baseline: BenchRow):
    """The row's interleaved rounds, if they were run against exactly this baseline's file."""
    paired = row.paired
    if paired and paired.baseline_sha256 and paired.baseline_sha256 == baseline.model_sha256:
        return paired
    return None


def _against_float32(row: BenchRow, baseline: BenchRow, slower: list[str], unclear: list[str]) -> BenchRow:
    """Flag `row` as slower than float32 only when interleaved rounds show it; say so when they do not."""
    point = _latency(row) / _latency(baseline)
    paired = _paired_with(row, baseline)
    found = verdict(paired.interval() if paired else None, SLOWER_MARGIN)
    row = dataclasses.replace(row, vs_float32=VsFloat32(
        p50_ratio=round(point, 3), verdict=found,
        **({"ratio": round(paired.ratio, 3), "ci95": tuple(round(x, 3) for x in paired.ci95),
            "rounds": paired.rounds} if paired else {})))
    if found == "slower":
        row = dataclasses.replace(row, slower_than_float32=round(paired.ratio, 2))
        low, high = paired.ci95
        slower.append(f"{_label(row)}: {paired.ratio:.2f}x float32 over {paired.rounds} interleaved rounds "
                      f"(95% CI {low:.2f}-{high:.2f}; p50 {_latency(row):.2f} vs {_latency(baseline):.2f} ms); "
                      "slower than float32 here, do not ship it for this target")
    elif paired and point > SLOWER_MARGIN:
        low, high = paired.ci95
        unclear.append(f"{_label(row)}: p50 {point:.2f}x float32 in separate runs, but {paired.ratio:.2f}x over "
                       f"{paired.rounds} interleaved rounds (95% CI {low:.2f}-{high:.2f}): no measurable "
                       "difference")
    elif paired is None and point > SLOWER_MARGIN:
        unclear.append(f"{_label(row)}: p50 {point:.2f}x float32 in separate runs, not confirmed by interleaved "
                       "rounds (bench it in one `edgekit bench` call with its float32 variant to decide)")
    return row


def _recommend(rows: list[BenchRow], max_latency_ms: float | None, min_accuracy: float | None
               ) -> tuple[dict, int | None]:
    """Among `ok` rows within both limits: the fastest when an accuracy floor is given, else the most accurate.
    Returns the advice's fields and the chosen row's position."""
    wanted = {"max_latency_ms": max_latency_ms, "min_accuracy": min_accuracy}
    fits = [i for i, r in enumerate(rows) if r.status == "ok" and _latency(r) is not None
            and (max_latency_ms is None or _latency(r) <= max_latency_ms)
            and (min_accuracy is None or (row_accuracy(r) is not None and row_accuracy(r) >= min_accuracy))]
    if not fits:
        return {"recommended": None, "constraints": wanted,
                "reason": "no ok row meets " + " and ".join(
                    f"{k.replace('_', ' ')} {v}" for k, v in wanted.items() if v is not None)}, None
    if min_accuracy is not None:
        chosen = min(fits, key=lambda i: (_latency(rows[i]), -(row_accuracy(rows[i]) or 0)))
        why = "the fastest row at or above the accuracy floor"
    else:
        chosen = max(fits, key=lambda i: (row_accuracy(rows[i]) if row_accuracy(rows[i]) is not None else -1,
                                          -_latency(rows[i])))
        why = "the most accurate row within the latency limit"
    best = rows[chosen]
    return {"recommended": {"variant": best.variant, "device": best.ran.device, "threads": best.ran.threads,
                            "delegate": best.ran.delegate, "p50_ms": _latency(best),
                            "accuracy": row_accuracy(best), "path": best.path},
            "constraints": wanted, "reason": why}, chosen


def advice_markdown(advice: dict) -> str:
    """The advice as Markdown lines, for results.md and the terminal."""
    lines = ["## Advice", ""]
    lines += [f"- Pareto-optimal (p50 vs accuracy, per device, threads and delegate): {name}"
              for name in advice["pareto"]] or ["- Pareto-optimal: none ranked (no row has an accuracy)"]
    lines += [f"- **Slower than float32**: {text}" for text in advice["slower_than_float32"]]
    lines += [f"- Not slower than float32: {text}" for text in advice.get("no_measurable_difference", [])]
    if advice.get("constraints"):
        pick = advice["recommended"]
        lines.append(f"- **Recommended**: {pick['variant']} ({pick['device']}, threads {pick['threads'] or 'default'},"
                     f" delegate {pick['delegate']}): p50 {pick['p50_ms']:.2f} ms, accuracy "
                     f"{pick['accuracy'] if pick['accuracy'] is None else format(pick['accuracy'], '.4f')} — "
                     f"{advice['reason']}" if pick else f"- **Recommended**: none; {advice['reason']}")
    return "\n".join(lines) + "\n"
