"""usage: python benchmarks/deterministic_cost.py [--epochs 3] [--rounds 2] [--out FILE.json]

What `train --deterministic` (TensorFlow op determinism) costs in speed, and whether it gives the same model
twice. `edgekit train` on the embedded digits (alpha 0.35, 32 px, from scratch) with and without
--deterministic, in child processes, alternating (A B B A ...) so both see the same machine load. Each run's
training time is the run manifest's `training.fit_seconds` (data loading and TensorFlow start-up excluded);
the validation accuracy is the manifest's. Prints a table; writes JSON (default
benchmarks/results/deterministic_cost.json) with the environment and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, ROOT, print_table, save_result

from edgekit import manifests


def train(deterministic: bool, epochs: int, home: Path, name: str) -> dict:
    env = {**os.environ, "EDGEKIT_HOME": str(home), "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [sys.executable, "-m", "edgekit.cli", "train", "--epochs", str(epochs), "--name", name, "--json"]
    done = subprocess.run(args + (["--deterministic"] if deterministic else []), env=env, capture_output=True,
                          text=True, check=True)
    run_dir = Path(json.loads(done.stdout)["run_dir"])
    manifest = manifests.read(run_dir, manifests.RunManifest)
    seconds = (manifest.training and manifest.training.fit_seconds) or manifest.wall_time_s
    return {"seconds": seconds, "accuracy": manifest.metrics.validation.accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "deterministic_cost.json")
    args = parser.parse_args()
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {"default": [], "deterministic": []}
    with tempfile.TemporaryDirectory(prefix="edgekit-det-") as scratch:
        for r in range(args.rounds):
            order = ["default", "deterministic"] if r % 2 == 0 else ["deterministic", "default"]
            for kind in order:
                runs[kind].append(train(kind == "deterministic", args.epochs, Path(scratch), f"{kind}-{r}"))
    rows = [{"mode": kind, "train s (median)": statistics.median(r["seconds"] for r in found),
             "accuracies": ", ".join(f"{r['accuracy']:.4f}" for r in found)} for kind, found in runs.items()]
    ratio = rows[1]["train s (median)"] / rows[0]["train s (median)"]
    print(f"digits, alpha 0.35, 32 px, {args.epochs} epochs, {args.rounds} runs each, alternating")
    print_table(rows, ["mode", "train s (median)", "accuracies"])
    print(f"deterministic / default: {ratio:.2f}x; deterministic runs identical: "
          f"{len({r['accuracy'] for r in runs['deterministic']}) == 1}")
    save_result(args.out, {"epochs": args.epochs, "rounds": args.rounds, "runs": runs, "ratio": ratio,
                           "load_average_start": list(load_start)}, load_start)


if __name__ == "__main__":
    main()
