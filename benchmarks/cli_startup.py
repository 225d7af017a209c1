"""CLI start-up and stderr noise, per command, for this tree and (optionally) another edgekit tree side by side.

Usage: python benchmarks/cli_startup.py RUN_DIR [--baseline-tree DIR] [--repeat 3] [--out results/cli_startup.json]

RUN_DIR is a finished run (with a float32 variant for the `.tflite` rows). `--baseline-tree` points at a
checkout of an older edgekit (e.g. `git worktree add ../base <commit>`); both trees run with the same
interpreter, selected through PYTHONPATH, alternating command by command so machine load hits both alike.
Reported: median wall time, whether TensorFlow was imported, and stderr lines that are not edgekit's own
(lines starting `INFO:`/`WARNING:`/`error:` and Keras's per-epoch lines are edgekit's or the user's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN = ("INFO: ", "WARNING: ", "error: ", "warning: ")
COMMANDS = [
    ["--help"],
    ["--version"],
    ["info", "{run}"],
    ["info", "{run}/compressed/float32/model.tflite"],
    ["report", "{run}"],
    ["compress", "--int8", "--dry-run"],
    ["devices"],
    ["doctor", "--device", "desktop"],
    ["eval", "{run}/compressed/float32/model.tflite", "--out", "{scratch}/eval-tflite"],
    ["eval", "{run}", "--out", "{scratch}/eval-keras"],
]
PROBE = "import runpy, sys; sys.argv = ['edgekit'] + sys.argv[1:]; " \
        "import atexit; atexit.register(lambda: print('TF=' + str('tensorflow' in sys.modules), file=sys.stderr)); " \
        "runpy.run_module('edgekit.cli', run_name='__main__')"


def run_once(tree: Path, args: list[str], home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "EDGEKIT_HOME": str(home)}
    started = time.perf_counter()
    # cwd=tree: `python -c` puts the working directory ahead of PYTHONPATH, so run inside the tree measured
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=900,
                          cwd=tree)
    wall = time.perf_counter() - started
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    tf_loaded = any(line == "TF=True" for line in lines)
    foreign = [line for line in lines if not line.startswith(OWN) and not line.startswith("TF=")
               and " epoch " not in line]
    return {"wall_s": wall, "exit": done.returncode, "tensorflow": tf_loaded, "noise_lines": len(foreign),
            "noise_sample": foreign[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--baseline-tree", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli_startup.json")
    args = parser.parse_args()
    trees = {"this": ROOT} | ({"baseline": args.baseline_tree.resolve()} if args.baseline_tree else {})
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgekit-cli-startup-{os.getpid()}"
    rows = []
    for command in COMMANDS:
        argv = [a.format(run=args.run.resolve(), scratch=scratch) for a in command]
        samples: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, tree in trees.items():
                samples[name].append(run_once(tree, argv, scratch / name))
        row = {"command": " ".join(command)}
        for name, found in samples.items():
            row[name] = {"median_s": round(statistics.median(s["wall_s"] for s in found), 3),
                         "exit": found[-1]["exit"], "tensorflow": found[-1]["tensorflow"],
                         "noise_lines": found[-1]["noise_lines"], "noise_sample": found[-1]["noise_sample"]}
        rows.append(row)
        print(_line(row, trees), flush=True)
    load = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()}, "load_average": load,
                                    "python": sys.version.split()[0], "rows": rows}, indent=2) + "\n")
    print(f"load average {load[0]:.1f}; written to {args.out}")


def _line(row: dict, trees: dict) -> str:
    cells = [f"{row['command'][:48]:48}"]
    for name in trees:
        r = row[name]
        cells.append(f"{name}: {r['median_s']:6.2f} s exit {r['exit']} TF {'yes' if r['tensorflow'] else 'no '} "
                     f"noise {r['noise_lines']}")
    return " | ".join(cells)


if __name__ == "__main__":
    main()
