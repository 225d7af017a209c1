"""usage: python benchmarks/latency_matrix.py [--quick] [--run RUN_DIR ...] [--rounds R] [--out NAME]

Every compressed variant of a run x threads 1 and 2 x every installed interpreter (LiteRT, tf.lite,
tflite-runtime from benchmarks/work/venv-tflite-runtime), timed with the on-device runner's `bench`
code path on real validation images, in interleaved rounds. Prints p50/p90 (medians over rounds),
each variant's speed-up over float32 at the same runtime and threads, and for every row the achieved
GMAC/s (MACs counted from the .tflite / p50) as a fraction of this CPU's peak for that many cores
(int8 rows against the int8 peak, float rows against the float32 FMA peak; see `peak.assumption` in
the JSON). Default runs: benchmarks/work/runs/digits-default and benchmarks/work/runs96/digits96.
--quick: 2 rounds of at least 0.15 s per cell instead of 3 rounds of 0.6 s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import RESULTS, ROOT, print_table, write_json
from _latency import Cell, count_macs, cpu_peak, images_for, run_rounds, workers

VARIANTS = ("float32", "float16", "dynamic-range", "int8-ptq", "int8-qat", "prune50-int8", "cluster16-int8")
INT8 = {"int8-ptq", "int8-qat", "prune50-int8", "cluster16-int8"}
RUNTIMES = ("litert", "tf.lite", "tflite_runtime")
THREADS = (1, 2)
DEFAULT_RUNS = (ROOT / "benchmarks/work/runs/digits-default", ROOT / "benchmarks/work/runs96/digits96")
QUICK = {"rounds": 2, "runs": 20, "min_seconds": 0.15}
FULL = {"rounds": 3, "runs": 50, "min_seconds": 0.6}


def build_cells(run_dirs: list[Path], pool) -> tuple[list[Cell], list[dict]]:
    cells, missing = [], []
    for run_dir in run_dirs:
        images = None
        for variant in VARIANTS:
            model = run_dir / "compressed" / variant / "model.tflite"
            if not model.exists():
                missing.append({"run": run_dir.name, "variant": variant, "status": "error",
                                "error": f"{model.parent} does not exist; run `edgekit compress {run_dir} --all`"})
                continue
            images = images or images_for(model.parent, RESULTS.parent / "work" / "bench-npz" /
                                          f"{run_dir.name}.npz", 64)
            for worker in pool:
                for threads in THREADS:
                    cells.append(Cell((run_dir.name, variant, worker.runtime, threads), model, images, worker,
                                      threads))
    return cells, missing


def rows_from(cells: list[Cell], peak: dict) -> list[dict]:
    summaries = {cell.key: cell.summary() for cell in cells}
    macs = {}
    rows = []
    for cell in cells:
        run, variant, runtime, threads = cell.key
        row = {"run": run, "variant": variant, "runtime": runtime, "threads": threads, **summaries[cell.key]}
        if row["status"] == "ok":
            base = summaries.get((run, "float32", runtime, threads), {})
            if base.get("status") == "ok":
                row["speedup_vs_float32"] = base["p50_ms"] / row["p50_ms"]
            if cell.model not in macs:
                macs[cell.model] = count_macs(cell.model)
            row["macs"] = macs[cell.model]["total"]
            row["gmacs"] = row["macs"] / (row["p50_ms"] * 1e6)
            limit = (peak["int8_peak_gmacs"] if variant in INT8 else peak["fp32_peak_gmacs"]) / peak["cores"] \
                * min(threads, peak["cores"])
            row["pct_of_peak"] = 100 * row["gmacs"] / limit if limit else None
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 short rounds per cell")
    parser.add_argument("--run", action="append", type=Path, help="run directory with compressed/ (repeatable)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 2)")
    parser.add_argument("--out", help="result name under benchmarks/results/ (default latency_matrix[_quick])")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    if args.rounds:
        settings["rounds"] = args.rounds
    run_dirs = [Path(p) for p in (args.run or [d for d in DEFAULT_RUNS if (d / "compressed").is_dir()])]
    if not run_dirs:
        print("no run with compressed variants; pass --run RUN_DIR", file=sys.stderr)
        return 1
    pool = workers(list(RUNTIMES))
    try:
        cells, missing = build_cells(run_dirs, pool)
        run_rounds(cells, settings["rounds"], settings["runs"], settings["min_seconds"])
    finally:
        for worker in pool:
            worker.close()
    peak = cpu_peak()
    rows = rows_from(cells, peak) + missing
    table = [{**r, "p50 ms": r.get("p50_ms"), "p90 ms": r.get("p90_ms"), "x f32": r.get("speedup_vs_float32"),
              "GMAC/s": r.get("gmacs"), "% peak": r.get("pct_of_peak"),
              "note": (r.get("error") or "")[:70]} for r in rows]
    print_table(table, ["run", "variant", "runtime", "threads", "p50 ms", "p90 ms", "x f32", "GMAC/s", "% peak",
                        "note"])
    print(f"\npeak: {peak['assumption']}; int8 {peak['int8_peak_gmacs']:.0f} GMAC/s, "
          f"float32 {peak['fp32_peak_gmacs']:.0f} GMAC/s for {peak['cores']} cores")
    name = args.out or ("latency_matrix_quick" if args.quick else "latency_matrix")
    path = write_json(name, {
        "benchmark": "latency_matrix", "quick": args.quick, "settings": settings,
        "runs": [str(d) for d in run_dirs], "peak": peak,
        "runtimes": {w.runtime: {"python": w.python, "problem": w.problem} for w in pool},
        "rows": rows,
    })
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
