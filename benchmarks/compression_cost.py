"""usage: python benchmarks/compression_cost.py [--quick] [--run RUN_DIR ...] [--sizes 10,50,100,500] [--seeds N]

What compression costs in wall time, and how many calibration images int8 needs. Part 1 reads every
variant's manifest (wall_time_s and the per-stage timings `compress` recorded) for each run. Part 2
converts the run's Keras model to full-integer int8 with 10, 50, 100 and 500 calibration images,
drawn by edgekit's own class-balanced sampler with several seeds, through the same `convert` call
`compress` makes, timing sampling + conversion and measuring each .tflite's validation accuracy with
TFLitePredictor. Sizes are interleaved within each seed; the sweep uses the first run (its accuracy must
mean something). Default runs: benchmarks/work/runs/digits-default and runs96/digits96 when trained.
--quick: one seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, print_table, write_json

from edgekit import manifests
from edgekit.compress.convert import ConvertParams, convert
from edgekit.data import calibration_images, load_dataset, load_pixels
from edgekit.evaluate import TFLitePredictor, evaluate_predictor
from edgekit.model import load_keras_model

DEFAULT_RUNS = (ROOT / "benchmarks/work/runs/digits-default", ROOT / "benchmarks/work/runs96/digits96")
SEEDS = (42, 7, 1234)


def recipe_costs(run_dir: Path) -> list[dict]:
    rows = []
    for manifest_file in sorted((run_dir / "compressed").glob("*/manifest.json")):
        manifest = manifests.read(manifest_file.parent, manifests.VariantManifest)
        stages = {t.stage: t.seconds for t in manifest.timings}
        rows.append({"run": run_dir.name, "recipe": manifest.name, "wall_s": manifest.wall_time_s,
                     "stages": stages, "training_s": sum(v for k, v in stages.items() if k != "convert"),
                     "convert_s": stages.get("convert"),
                     "accuracy": manifest.metrics.validation.accuracy})
    return rows


def calibration_sweep(run_dir: Path, sizes: list[int], seeds: list[int]) -> list[dict]:
    manifest = manifests.read(run_dir, manifests.RunManifest)
    size = manifest.model.image_size
    model = load_keras_model(run_dir / "model.keras")
    splits = load_dataset(manifest.dataset.reload_spec)
    val_pixels = load_pixels(splits.validation, size)
    results = []
    with tempfile.TemporaryDirectory(prefix="calibration-") as scratch:
        for round_index, seed in enumerate(seeds):
            order = sizes if round_index % 2 == 0 else sizes[::-1]
            for count in order:
                started = time.perf_counter()
                images = calibration_images(splits.train, size, count, seed=seed)
                sampled = time.perf_counter()
                content = convert(model, ConvertParams(mode="int8", calibration_samples=count), images)
                done = time.perf_counter()
                path = Path(scratch) / f"{seed}-{count}.tflite"
                path.write_bytes(content)
                metrics = evaluate_predictor(TFLitePredictor(path), val_pixels, splits.validation.targets,
                                             splits.labels)
                results.append({"run": run_dir.name, "samples": count, "seed": seed,
                                "sample_s": sampled - started, "convert_s": done - sampled,
                                "total_s": done - started, "accuracy": metrics["accuracy"]})
                print(f"{run_dir.name} seed {seed} n={count}: {done - started:.1f} s, "
                      f"accuracy {metrics['accuracy']:.4f}", file=sys.stderr)
    return results


def summarise(results: list[dict], float_accuracy: dict) -> list[dict]:
    rows = []
    for run, count in sorted({(r["run"], r["samples"]) for r in results}):
        group = [r for r in results if r["run"] == run and r["samples"] == count]
        accuracies = [r["accuracy"] for r in group]
        rows.append({"run": run, "samples": count, "seeds": len(group),
                     "total_s": statistics.median(r["total_s"] for r in group),
                     "convert_s": statistics.median(r["convert_s"] for r in group),
                     "acc_mean": statistics.mean(accuracies), "acc_min": min(accuracies),
                     "acc_max": max(accuracies), "float_acc": float_accuracy[run],
                     "delta_vs_float": statistics.mean(accuracies) - float_accuracy[run]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one calibration draw per size")
    parser.add_argument("--run", action="append", type=Path, help="trained run directory (repeatable)")
    parser.add_argument("--sizes", default="10,50,100,500", help="calibration set sizes, comma-separated")
    parser.add_argument("--seeds", type=int, help=f"calibration draws per size (default {len(SEEDS)}, quick 1)")
    parser.add_argument("--out", help="result name under benchmarks/results/ (default compression_cost[_quick])")
    args = parser.parse_args()
    run_dirs = args.run or [d for d in DEFAULT_RUNS if (d / "manifest.json").exists()]
    if not run_dirs:
        print("no trained run found; pass --run RUN_DIR", file=sys.stderr)
        return 1
    sweep_runs = run_dirs[:1]
    seeds = list(SEEDS[: args.seeds or (1 if args.quick else len(SEEDS))])
    sizes = [int(s) for s in args.sizes.split(",")]

    costs = [row for run_dir in run_dirs for row in recipe_costs(Path(run_dir))]
    if not costs:
        print("no compressed variants yet: recipe wall times need `edgekit compress RUN --all` first")
    print_table([{**r, "wall s": r["wall_s"], "training s": r["training_s"], "convert s": r["convert_s"],
                  "acc": f"{r['accuracy']:.4f}"} for r in costs] or [{}],
                ["run", "recipe", "wall s", "training s", "convert s", "acc"])
    print()
    results = [r for run_dir in sweep_runs for r in calibration_sweep(Path(run_dir), sizes, seeds)]
    float_accuracy = {Path(d).name: manifests.read(Path(d), manifests.RunManifest).metrics.validation.accuracy
                      for d in sweep_runs}
    summary = summarise(results, float_accuracy)
    print_table([{**r, "n": r["samples"], "calib+convert s": r["total_s"], "acc mean": f"{r['acc_mean']:.4f}",
                  "acc min": f"{r['acc_min']:.4f}", "acc max": f"{r['acc_max']:.4f}",
                  "float acc": f"{r['float_acc']:.4f}"} for r in summary],
                ["run", "n", "seeds", "calib+convert s", "acc mean", "acc min", "acc max", "float acc"])
    name = args.out or ("compression_cost_quick" if args.quick else "compression_cost")
    path = write_json(name, {"benchmark": "compression_cost", "quick": args.quick, "runs": [str(d) for d in run_dirs],
                             "recipes": costs, "calibration": summary, "calibration_raw": results})
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
