"""usage: python benchmarks/sparse_inference.py [--quick] [--run DIR] [--sparsity S] [--epochs E] [--rounds R] [--force]

Does sparsity buy latency on this CPU, or only size? A copy of the run (benchmarks/work/sparse/<run>/)
is compressed four ways with `edgekit.compress.pipeline.compress`: its dense parent as float32 and
int8, and the same after pruning with tfmot's XNNPACK latency policy (only 1x1 convolutions, to
`--sparsity`) as float32 and int8. All four are timed with LiteRT through the runner's `bench` code
path at threads 1 and 2 in interleaved rounds; the table gives p50 (median over rounds), the pruned
model's speed-up over its dense parent, sizes, gzip sizes, sparsity, accuracy and whether the file
stores sparse weights (DENSIFY ops), which XNNPACK needs before it even considers sparse kernels.
Default run: benchmarks/work/runs96/digits96 (else runs/digits-default). Variants already made with the
same recipe are reused unless --force. --quick: 2 rounds of 0.15 s per cell, 1 pruning epoch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from pathlib import Path

from _common import ROOT, WORK, print_table, write_json
from _latency import Cell, images_for, run_rounds, workers

from edgekit import manifests
from edgekit.compress.pipeline import compress, variant_dir
from edgekit.recipes import recipe_from_mapping

DEFAULT_RUNS = (ROOT / "benchmarks/work/runs96/digits96", ROOT / "benchmarks/work/runs/digits-default")
THREADS = (1, 2)
QUICK = {"rounds": 2, "runs": 20, "min_seconds": 0.15, "epochs": 1}
FULL = {"rounds": 5, "runs": 50, "min_seconds": 0.6, "epochs": 2}


def recipes(sparsity: float, epochs: int) -> dict:
    prune = {"type": "prune", "target_sparsity": sparsity, "latency_policy": True, "epochs": epochs,
             "learning_rate": 1e-4}
    tag = f"sparse{round(sparsity * 100)}"
    mappings = {
        "dense-float32": [{"type": "convert", "mode": "float32"}],
        "dense-int8": [{"type": "convert", "mode": "int8", "calibration_samples": 100}],
        f"{tag}-float32": [prune, {"type": "convert", "mode": "float32"}],
        f"{tag}-int8": [prune, {"type": "convert", "mode": "int8", "calibration_samples": 100}],
    }
    return {name: recipe_from_mapping({"name": name, "stages": stages}, "sparse_inference.py")
            for name, stages in mappings.items()}


def copy_run(run_dir: Path) -> Path:
    """The run without its variants, so our recipes never write into someone else's run directory."""
    target = WORK / "sparse" / run_dir.name
    if not (target / "manifest.json").exists():
        shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("compressed", "checkpoints", "tensorboard"),
                        dirs_exist_ok=True)
    return target


def make_variants(run_copy: Path, wanted: dict, force: bool) -> dict:
    """name → {"dir", "manifest", "built_s", "warnings"}; a failure becomes an error entry."""
    made = {}
    for name, recipe in wanted.items():
        directory = variant_dir(run_copy, recipe)
        existing = None if force else manifests.read_optional(directory, manifests.VariantManifest)
        if existing is not None and existing.recipe == recipe:  # Recipe equality ignores where it was read from
            made[name] = {"dir": directory, "manifest": existing, "built_s": None, "warnings": []}
            continue
        print(f"compressing {name} ...", file=sys.stderr)
        started = time.time()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                variant = compress(run_copy, recipe)
        except Exception as exc:  # noqa: BLE001 - a failed variant is an error row, not a crash
            made[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            continue
        notes = sorted({str(w.message).splitlines()[0][:240] for w in caught if "prune" in str(w.message)})
        made[name] = {"dir": variant.directory, "manifest": variant.manifest,
                      "built_s": round(time.time() - started, 1), "warnings": notes}
    return made


def describe(name: str, entry: dict) -> dict:
    if "error" in entry:
        return {"variant": name, "status": "error", "error": entry["error"]}
    manifest = entry["manifest"]
    tflite = manifest.tflite
    return {"variant": name, "size": tflite["size"], "gzip_size": tflite["gzip_size"],
            "sparsity": manifest.sparsity.get("overall", 0.0),
            "accuracy": manifest.metrics.validation.accuracy,
            "densify_ops": tflite["ops"].get("DENSIFY", 0), "built_s": entry["built_s"],
            "warnings": entry["warnings"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 short rounds, 1 pruning epoch")
    parser.add_argument("--run", type=Path, help="trained run directory (it is copied, never written)")
    parser.add_argument("--sparsity", type=float, default=0.75, help="target sparsity of the 1x1 convolutions")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 2)")
    parser.add_argument("--epochs", type=int, help="pruning fine-tune epochs (default 2, quick 1)")
    parser.add_argument("--force", action="store_true", help="re-make the variants even when they exist")
    parser.add_argument("--out", help="result name under benchmarks/results/ (default sparse_inference[_quick])")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    settings["rounds"] = args.rounds or settings["rounds"]
    settings["epochs"] = args.epochs or settings["epochs"]
    run_dir = args.run or next((d for d in DEFAULT_RUNS if (d / "manifest.json").exists()), None)
    if run_dir is None:
        print("no trained run found; pass --run RUN_DIR", file=sys.stderr)
        return 1
    run_copy = copy_run(Path(run_dir))
    made = make_variants(run_copy, recipes(args.sparsity, settings["epochs"]), args.force)
    rows = {name: describe(name, entry) for name, entry in made.items()}

    pool = workers(["litert"])
    images = None
    cells = []
    for name, entry in made.items():
        if "error" in entry:
            continue
        images = images or images_for(entry["dir"], WORK / "bench-npz" / f"{run_copy.name}.npz", 64)
        cells += [Cell((name, t), entry["dir"] / "model.tflite", images, pool[0], t) for t in THREADS]
    try:
        run_rounds(cells, settings["rounds"], settings["runs"], settings["min_seconds"])
    finally:
        pool[0].close()
    latency = {cell.key: cell.summary() for cell in cells}

    table = []
    for name, row in rows.items():
        dense = "dense-" + name.split("-", 1)[1]
        for threads in THREADS:
            timing = latency.get((name, threads), {})
            base = latency.get((dense, threads), {})
            speedup = base["p50_ms"] / timing["p50_ms"] if timing.get("p50_ms") and base.get("p50_ms") else None
            row[f"threads{threads}"] = {**timing, "speedup_vs_dense": speedup}
            table.append({"variant": name, "threads": threads, "p50 ms": timing.get("p50_ms"),
                          "x dense": speedup, "size KB": row.get("size", 0) / 1024,
                          "gzip KB": row.get("gzip_size", 0) / 1024, "sparsity": row.get("sparsity"),
                          "acc": row.get("accuracy"), "DENSIFY": row.get("densify_ops"),
                          "note": (row.get("error") or timing.get("error") or "")[:60]})
    print_table(table, ["variant", "threads", "p50 ms", "x dense", "size KB", "gzip KB", "sparsity", "acc",
                        "DENSIFY", "note"])
    for row in rows.values():
        for note in row.get("warnings") or []:
            print(f"{row['variant']}: {note}")
    name = args.out or ("sparse_inference_quick" if args.quick else "sparse_inference")
    path = write_json(name, {"benchmark": "sparse_inference", "quick": args.quick, "settings": settings,
                             "run": str(run_dir), "run_copy": str(run_copy), "sparsity": args.sparsity,
                             "runtime": pool[0].runtime, "variants": list(rows.values())})
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
