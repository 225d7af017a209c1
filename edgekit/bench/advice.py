"""What to ship, from a bench table: the Pareto-optimal rows, variants slower than float32, a pick.

Compression does not always pay: on an x86 CPU the dynamic-range variant took 13.5 ms against 7.4 ms
for float32 at 224 px. The table alone leaves the reader to notice; this says it. Rows are compared
only within one device, thread count and delegate, since those change latency more than variants do.
"""

from __future__ import annotations

SLOWER_MARGIN = 1.05  # within 5% of float32 is noise on a shared CPU, not a finding


def _latency(row: dict) -> float | None:
    return (row.get("latency_ms") or {}).get("p50")


def row_accuracy(row: dict) -> float | None:
    """The device's own accuracy where it was measured, else the host's."""
    return row["device_accuracy"] if row.get("device_accuracy") is not None else row.get("accuracy")


def _label(row: dict) -> str:
    return f"{row['variant']} ({row['device']}, threads {row['threads'] or 'default'}, delegate {row['delegate']})"


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] in ("ok", "drift") and _latency(row) is not None:
            groups.setdefault((row["device"], row["threads"], row["delegate"]), []).append(row)
    return groups


def _dominated(row: dict, others: list[dict]) -> bool:
    lat, acc = _latency(row), row_accuracy(row)
    return any(_latency(o) <= lat and row_accuracy(o) >= acc and (_latency(o) < lat or row_accuracy(o) > acc)
               for o in others if o is not row)


def _is_float32(row: dict) -> bool:
    return row.get("mode") == "float32" or (row.get("mode") is None and row["variant"] == "float32")


def advise(rows: list[dict], max_latency_ms: float | None = None, min_accuracy: float | None = None) -> dict:
    """Mark each row (`pareto`, `slower_than_float32`) and return the advice for the report."""
    pareto, slower = [], []
    for group in _groups(rows).values():
        ranked = [r for r in group if row_accuracy(r) is not None]
        for row in ranked:
            row["pareto"] = not _dominated(row, ranked)
            if row["pareto"]:
                pareto.append(_label(row))
        baseline = next((r for r in group if _is_float32(r)), None)
        for row in group:
            if baseline is not None and row is not baseline and _latency(row) > SLOWER_MARGIN * _latency(baseline):
                row["slower_than_float32"] = round(_latency(row) / _latency(baseline), 2)
                slower.append(f"{_label(row)}: p50 {_latency(row):.2f} ms vs {_latency(baseline):.2f} ms for "
                              f"float32 ({row['slower_than_float32']:.2f}x); slower than float32 here, do not "
                              "ship it for this target")
    advice = {"pareto": pareto, "slower_than_float32": slower, "recommended": None}
    if max_latency_ms is not None or min_accuracy is not None:
        advice.update(_recommend(rows, max_latency_ms, min_accuracy))
    return advice


def _recommend(rows: list[dict], max_latency_ms: float | None, min_accuracy: float | None) -> dict:
    """Among `ok` rows within both limits: the fastest when an accuracy floor is given, else the most accurate."""
    wanted = {"max_latency_ms": max_latency_ms, "min_accuracy": min_accuracy}
    fits = [r for r in rows if r["status"] == "ok" and _latency(r) is not None
            and (max_latency_ms is None or _latency(r) <= max_latency_ms)
            and (min_accuracy is None or (row_accuracy(r) is not None and row_accuracy(r) >= min_accuracy))]
    if not fits:
        return {"recommended": None, "constraints": wanted,
                "reason": "no ok row meets " + " and ".join(
                    f"{k.replace('_', ' ')} {v}" for k, v in wanted.items() if v is not None)}
    if min_accuracy is not None:
        best = min(fits, key=lambda r: (_latency(r), -(row_accuracy(r) or 0)))
        why = "the fastest row at or above the accuracy floor"
    else:
        best = max(fits, key=lambda r: (row_accuracy(r) if row_accuracy(r) is not None else -1, -_latency(r)))
        why = "the most accurate row within the latency limit"
    best["recommended"] = True
    return {"recommended": {"variant": best["variant"], "device": best["device"], "threads": best["threads"],
                            "delegate": best["delegate"], "p50_ms": _latency(best),
                            "accuracy": row_accuracy(best), "path": best.get("path")},
            "constraints": wanted, "reason": why}


def advice_markdown(advice: dict) -> str:
    """The advice as Markdown lines, for results.md and the terminal."""
    lines = ["## Advice", ""]
    lines += [f"- Pareto-optimal (p50 vs accuracy, per device, threads and delegate): {name}"
              for name in advice["pareto"]] or ["- Pareto-optimal: none ranked (no row has an accuracy)"]
    lines += [f"- **Slower than float32**: {text}" for text in advice["slower_than_float32"]]
    if advice.get("constraints"):
        pick = advice["recommended"]
        lines.append(f"- **Recommended**: {pick['variant']} ({pick['device']}, threads {pick['threads'] or 'default'},"
                     f" delegate {pick['delegate']}): p50 {pick['p50_ms']:.2f} ms, accuracy "
                     f"{pick['accuracy'] if pick['accuracy'] is None else format(pick['accuracy'], '.4f')} — "
                     f"{advice['reason']}" if pick else f"- **Recommended**: none; {advice['reason']}")
    return "\n".join(lines) + "\n"
