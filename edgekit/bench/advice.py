"""What to ship, from a bench table: the Pareto-optimal rows, variants slower than float32, a pick.

Compression does not always pay: on an x86 CPU the dynamic-range variant took 13.5 ms against 7.4 ms
for float32 at 224 px. The table alone leaves the reader to notice; this says it. Rows are compared
only within one device, thread count and delegate, since those change latency more than variants do.
"Slower" is decided from interleaved rounds against float32 (`edgekit.bench.paired`), not from two p50s
measured in separate runs: those differ by the machine's drift as much as by the model.
"""

from __future__ import annotations

from edgekit.bench.paired import verdict

SLOWER_MARGIN = 1.05  # a confirmed slowdown smaller than 5% is no reason to avoid a variant


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
    pareto, slower, unclear = [], [], []
    for group in _groups(rows).values():
        ranked = [r for r in group if row_accuracy(r) is not None]
        for row in ranked:
            row["pareto"] = not _dominated(row, ranked)
            if row["pareto"]:
                pareto.append(_label(row))
        baseline = next((r for r in group if _is_float32(r)), None)
        for row in group:
            if baseline is not None and row is not baseline:
                _against_float32(row, baseline, slower, unclear)
    advice = {"pareto": pareto, "slower_than_float32": slower, "no_measurable_difference": unclear,
              "recommended": None}
    if max_latency_ms is not None or min_accuracy is not None:
        advice.update(_recommend(rows, max_latency_ms, min_accuracy))
    return advice


def _paired_with(row: dict, baseline: dict) -> dict | None:
    """The row's interleaved rounds, if they were run against exactly this baseline's file."""
    paired = row.get("paired")
    if paired and paired.get("baseline_sha256") and paired["baseline_sha256"] == baseline.get("model_sha256"):
        return paired
    return None


def _against_float32(row: dict, baseline: dict, slower: list[str], unclear: list[str]) -> None:
    """Flag `row` as slower than float32 only when interleaved rounds show it; say so when they do not."""
    point = _latency(row) / _latency(baseline)
    paired = _paired_with(row, baseline)
    found = verdict(paired, SLOWER_MARGIN)
    row["vs_float32"] = {"p50_ratio": round(point, 3), "verdict": found,
                         **({"ratio": round(paired["ratio"], 3), "ci95": [round(x, 3) for x in paired["ci95"]],
                             "rounds": paired["rounds"]} if paired else {})}
    if found == "slower":
        row["slower_than_float32"] = round(paired["ratio"], 2)
        low, high = paired["ci95"]
        slower.append(f"{_label(row)}: {paired['ratio']:.2f}x float32 over {paired['rounds']} interleaved rounds "
                      f"(95% CI {low:.2f}-{high:.2f}; p50 {_latency(row):.2f} vs {_latency(baseline):.2f} ms); "
                      "slower than float32 here, do not ship it for this target")
    elif paired and point > SLOWER_MARGIN:
        low, high = paired["ci95"]
        unclear.append(f"{_label(row)}: p50 {point:.2f}x float32 in separate runs, but {paired['ratio']:.2f}x over "
                       f"{paired['rounds']} interleaved rounds (95% CI {low:.2f}-{high:.2f}): no measurable "
                       "difference")
    elif paired is None and point > SLOWER_MARGIN:
        unclear.append(f"{_label(row)}: p50 {point:.2f}x float32 in separate runs, not confirmed by interleaved "
                       "rounds (bench it in one `edgekit bench` call with its float32 variant to decide)")


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
    lines += [f"- Not slower than float32: {text}" for text in advice.get("no_measurable_difference", [])]
    if advice.get("constraints"):
        pick = advice["recommended"]
        lines.append(f"- **Recommended**: {pick['variant']} ({pick['device']}, threads {pick['threads'] or 'default'},"
                     f" delegate {pick['delegate']}): p50 {pick['p50_ms']:.2f} ms, accuracy "
                     f"{pick['accuracy'] if pick['accuracy'] is None else format(pick['accuracy'], '.4f')} — "
                     f"{advice['reason']}" if pick else f"- **Recommended**: none; {advice['reason']}")
    return "\n".join(lines) + "\n"
