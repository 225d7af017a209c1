"""`edgekit compress` with several recipes: this tree (run loaded once) against an older tree, side by side.

Usage: python benchmarks/compress_load_once.py RUN_DIR --baseline-tree DIR [--recipes float32,float16,dynamic-range]
       [--out benchmarks/results/compress_load_once.json]

Each tree compresses its own fresh copy of RUN_DIR (no variants) with the same recipes in one command, one
tree after the other, and the wall time of the whole command is reported with the machine's load average.
The older tree loads the dataset, the validation pixels and the float model's outputs once per recipe;
this one loads them once per invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tree(tree: Path, run: Path, recipes: list[str], scratch: Path) -> dict:
    copy = scratch / f"{tree.name}-run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("compressed", "bench", "eval-*"))
    args = [sys.executable, "-m", "edgekit.cli", "compress", str(copy)]
    for recipe in recipes:
        args += ["--recipe", recipe]
    env = {**os.environ, "PYTHONPATH": str(tree), "EDGEKIT_HOME": str(scratch / f"{tree.name}-home")}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600, cwd=tree)  # see PYTHONPATH
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{tree}: compress failed: {done.stderr.strip().splitlines()[-1:]}")
    return {"tree": str(tree), "wall_s": round(wall, 1), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--recipes", default="float32,float16,dynamic-range")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compress_load_once.json")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    with tempfile.TemporaryDirectory(prefix="edgekit-load-once-") as scratch:
        results = {name: run_tree(tree, args.run.resolve(), recipes, Path(scratch))
                   for name, tree in (("baseline", args.baseline_tree.resolve()), ("this", ROOT))}
    ratio = results["this"]["wall_s"] / results["baseline"]["wall_s"]
    for name, r in results.items():
        print(f"{name:9} {r['wall_s']:7.1f} s  (load {r['load_before']:.1f} → {r['load_after']:.1f})")
    print(f"this / baseline: {ratio:.2f} for {len(recipes)} recipes ({', '.join(recipes)})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"recipes": recipes, "results": results, "ratio": round(ratio, 3)}, indent=2)
                        + "\n")


if __name__ == "__main__":
    main()
