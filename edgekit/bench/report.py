"""Benchmark results as files people read: JSON (with the environment), CSV, Markdown and a Pareto plot.

Result files name their device and time, and the JSON carries versions, CPU and runtime, because a
latency without its environment cannot be compared with anything.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from edgekit import manifests
from edgekit.artifacts import library_versions, write_text_atomic
from edgekit.bench.advice import advice_markdown, row_accuracy
from edgekit.bench.rows import BenchResults, BenchRow, read_results, write_results_json
from edgekit.errors import EdgekitError
from edgekit.render import ParetoPoint, csv_text, fmt, markdown_table, pareto_plot

CSV_FIELDS = ["variant", "device", "runtime", "runtime_version", "delegate", "threads", "threads_requested",
              "size", "accuracy", "device_accuracy",
              "mean", "p50", "p90", "p99", "min", "max", "n", "throughput_ips", "peak_rss_mb", "load_ms",
              "first_ms", "status", "error"]


def _flat(row: BenchRow) -> dict:
    record = row.as_dict()
    latency = record["latency_ms"] or {}
    return {**{k: record.get(k) for k in CSV_FIELDS}, **{k: latency.get(k) for k in ("mean", "p50", "p90", "p99",
                                                                                     "min", "max", "n")}}


def _threads_cell(row: BenchRow) -> str:
    effective = row.ran.threads or "default"
    asked = row.ran.threads_requested
    return f"{effective} (asked {asked})" if asked and asked != row.ran.threads else str(effective)


def _accuracy_cells(row: BenchRow) -> list[str]:
    host = fmt(row.accuracy, ".4f") if row.accuracy is not None else "not measured"
    device = row.device_accuracy
    if device is not None:
        return [host, fmt(device, ".4f")]
    return [host, quick_check_note(row) or "-"]


def quick_check_note(row: BenchRow) -> str | None:
    """What the row's device answers rest on when no accuracy pass ran: only the few timing samples.

    A quick check of 8 samples once saw 1 step where the full pass saw 54 steps and 3 flips, so a
    reader must not take "no drift" from it for more than it is.
    """
    check = row.output_check
    if row.device_accuracy is not None or not check or not check.checked:
        return None
    size = (f"{check.max_steps:g} steps" if check.unit == "quantization steps"
            else f"{check.max_abs_diff or 0:.3g} abs")
    return f"not measured (quick check only: {check.checked} samples, max {size})"


def environment_lines(rows: list[BenchRow]) -> list[str]:
    """One compact line per device: the Python, numpy and runtime its latencies were measured with."""
    seen = {}
    for row in rows:
        if row.environment:
            seen.setdefault(row.ran.device, row.environment)
    lines = []
    for device, env in seen.items():
        cpu = env.cpu_model or env.machine or "?"
        parts = [f"Python {env.python or '?'}", f"numpy {env.numpy or '?'}",
                 f"{env.runtime or '?'} {env.runtime_version or ''}".strip(),
                 f"{env.machine or '?'} ({cpu}, {env.cpu_count or '?'} CPUs)", env.os]
        lines.append(f"{device}: " + ", ".join(p for p in parts if p))
    return lines


# What a terminal loses first when the table is wider than it (results.md and --wide keep every column).
TERMINAL_DROP = ("min", "max", "mean ms", "p99", "n", "first ms", "load ms", "peak MB", "delegate", "img/s")
HEADERS = ["variant", "runtime", "delegate", "threads", "size", "accuracy (host)", "accuracy (device)", "mean ms",
           "p50", "p90", "p99", "min", "max", "n", "img/s", "peak MB", "load ms", "first ms", "status"]


def results_markdown(rows: list[BenchRow], width: int | None = None) -> str:
    """The results table. With `width` (a terminal) it is fitted to it: least-read columns go first, a runtime
    every row shares moves to a line above, and a status keeps its word (the reasons are printed as warnings)."""
    table, runtimes = [], set()
    for row in rows:
        flat = _flat(row)
        runtime = f"{flat['runtime']} {flat['runtime_version']}" if flat["runtime"] else "-"
        runtimes.add(runtime)
        status = row.status if row.status == "ok" or width else f"{row.status}: {row.error}"
        marks = "".join([" ★" if row.recommended else "", " (pareto)" if row.pareto else "",
                         " (slower than float32)" if row.slower_than_float32 else ""])
        table.append([row.variant + marks, runtime, row.ran.delegate, _threads_cell(row),
                      fmt(row.size, "size"), *_accuracy_cells(row), fmt(flat["mean"], "ms"),
                      fmt(flat["p50"], "ms"), fmt(flat["p90"], "ms"), fmt(flat["p99"], "ms"), fmt(flat["min"], "ms"),
                      fmt(flat["max"], "ms"), flat["n"] or "-", fmt(row.throughput_ips, ".1f"),
                      fmt(row.peak_rss_mb, ".0f"), fmt(row.load_ms, "ms"), fmt(row.first_ms, "ms"), status])
    if width is None:
        markdown = markdown_table(HEADERS, table)
    else:
        headers, above = list(HEADERS), ""
        if len(runtimes) == 1 and "-" not in runtimes:
            column = headers.index("runtime")
            headers.pop(column)
            table = [cells[:column] + cells[column + 1:] for cells in table]
            above = f"runtime: {runtimes.pop()}\n"
        headers = [{"accuracy (host)": "acc host", "accuracy (device)": "acc device"}.get(h, h) for h in headers]
        markdown = above + markdown_table(headers, table, width, TERMINAL_DROP, keep=("variant",))
    environments = environment_lines(rows)
    if not environments:
        return markdown
    return markdown + "\n\n" + "\n".join(f"- environment of {line}" for line in environments) + "\n"


def inputs_note(rows: list[BenchRow]) -> str:
    """What each model was fed, once per variant: generated tensors must not pass for photos."""
    seen = {}
    for row in rows:
        if row.inputs:
            seen.setdefault(row.variant, row.inputs)
    return "".join(f"- {name}: {text}\n" for name, text in seen.items())


def results_csv(rows: list[BenchRow]) -> str:
    return csv_text(CSV_FIELDS, [_flat(row) for row in rows])


def _plot_points(rows: list[BenchRow]) -> list[ParetoPoint]:
    return [ParetoPoint(r.latency_ms.p90, row_accuracy(r), f"{r.variant} t{r.ran.threads or '-'}", r.size)
            for r in rows if r.status != "error" and r.latency_ms and row_accuracy(r) is not None]


def environment(device: dict) -> dict:
    return {"host": platform.node(), "host_cpu": cpu_model(), "host_python": platform.python_version(),
            "versions": library_versions(), **device}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_results(out_dir: Path, device_name: str, result, settings: dict,
                  parents: list[manifests.ParentRef], advice: dict | None = None) -> Path:
    """Write results.json/.csv/.md and pareto.png into `out_dir`, described by a manifest."""

    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_json(out_dir / "results.json", BenchResults(
        device=device_name, created=time.strftime("%Y-%m-%dT%H:%M:%S"), partial=result.partial, settings=settings,
        environment=environment(result.device), advice=advice, rows=tuple(result.rows)))
    write_text_atomic(out_dir / "results.csv", results_csv(result.rows))
    markdown = results_markdown(result.rows)
    note = "\n\n**partial results**: some variants failed; see the status column.\n" if result.partial else "\n"
    extra = (f"\n{advice_markdown(advice)}" if advice else "") + (f"\n## Inputs\n\n{inputs_note(result.rows)}"
                                                                   if inputs_note(result.rows) else "")
    write_text_atomic(out_dir / "results.md", f"# edgekit bench on {device_name}\n\n{markdown}{note}{extra}")
    files = ["results.json", "results.csv", "results.md"]
    if pareto_plot(_plot_points(result.rows), out_dir / "pareto.png", f"{device_name}: accuracy vs p90 latency",
                   xlabel="p90 latency (ms)", ylabel="accuracy (validation; on the device where measured)"):
        files.append("pareto.png")
    manifests.write(out_dir, manifests.BenchManifest(device=device_name, parents=tuple(parents),
                                                     partial=result.partial, settings=settings), files)
    return out_dir


def compare(a_path: Path, b_path: Path) -> tuple[list[dict], str]:
    """Per-variant change between two results.json files (of any version): p50 ratio B/A, accuracy delta."""
    a, b = read_results(a_path), read_results(b_path)

    def key(row: BenchRow):
        return (row.variant, row.ran.delegate, row.ran.threads)

    a_rows = {key(r): r for r in a.rows}
    rows = []
    for row in b.rows:
        before = a_rows.get(key(row))
        if before is None:
            continue
        p50_a = before.latency_ms.p50 if before.latency_ms else None
        p50_b = row.latency_ms.p50 if row.latency_ms else None
        acc_a, acc_b = before.accuracy, row.accuracy
        rows.append({"variant": row.variant, "delegate": row.ran.delegate, "threads": row.ran.threads,
                     "p50_a": p50_a, "p50_b": p50_b, "p50_ratio": p50_b / p50_a if p50_a and p50_b else None,
                     "accuracy_delta": acc_b - acc_a if acc_a is not None and acc_b is not None else None})
    if not rows:
        raise EdgekitError(f"{a_path} and {b_path} share no variant to compare")
    table = markdown_table(["variant", "delegate", "threads", "p50 A ms", "p50 B ms", "B/A", "Δ accuracy"],
                           [[r["variant"], r["delegate"], r["threads"] or "default", fmt(r["p50_a"], "ms"),
                             fmt(r["p50_b"], "ms"), fmt(r["p50_ratio"], ".2f", "x"), fmt(r["accuracy_delta"], "pt")]
                            for r in rows])
    return rows, table
