"""usage: python benchmarks/cache_epoch_memory.py [--images 2000,5000,20000] [--image-size 96] [--before REV ...]
                                               [--out benchmarks/results/cache_epoch_memory.json]

Peak memory of `edgekit train --epochs 1` against the size of the dataset: on a fresh folder (the first run:
scan, hashes, the pixel cache filled) and again (the cached run). The model is MobileNetV2 alpha 0.35 from
scratch, so the figure is about the data path. Each command is one child process (benchmarks/_rss_child.py)
that reports its own peak resident memory, per phase (load: scan, hashes and split; cache: the pixel cache
entry; fit; final: evaluation and saving), from the kernel's high-water mark (VmHWM), not getrusage (on
Linux a child's ru_maxrss starts from its parent's peak). A folder of N images holds the first N of one
generated folder of 320x240 photos (benchmarks/large_dataset.py makes them), hard-linked; an epoch reads
its 80% training split and validates on the rest. With --before REV (repeatable), that revision's edgekit
runs each command too, alternating with this tree. Prints a table; writes the JSON with its environment
after every command, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ROOT, WORK, environment, print_table, save_result  # noqa: E402
from large_dataset import export_tree, photo_folder  # noqa: E402

from edgekit import manifests  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402

CHILD = Path(__file__).resolve().parent / "_rss_child.py"
RUNS = ("first", "cached")


def subset_folder(source: Path, count: int) -> Path:
    """The first `count` photos of `source` (by file name, every class folder), as hard links."""
    target = WORK / f"{source.name}-first{count}"
    if (target / ".complete").exists():
        return target
    photos = sorted(source.glob("class*/*.jpg"), key=lambda p: p.name)[:count]
    if len(photos) < count:
        raise SystemExit(f"{source} has {len(photos)} photos, fewer than {count}")
    for photo in photos:
        link = target / photo.parent.name / photo.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.link(photo, link)
    (target / ".complete").write_text(f"{count}\n")
    return target


def train_once(tree: Path, folder: Path, size: int, home: Path, name: str) -> dict:
    """One `train --epochs 1` in a child: its peak RSS per phase, the wall time and the exit code."""
    env = {**os.environ, "EDGEKIT_HOME": str(home), "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = ["--quiet", "train", "--data", str(folder), "--image-size", str(size), "--epochs", "1",
            "--weights", "none", "--alpha", "0.35", "--batch-size", "64", "--seed", "0",
            "--runs-dir", str(home / "runs"), "--name", name, "--json"]
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "rss.json"
        started = time.perf_counter()
        # cwd=tree: `python FILE` puts the script's folder first on sys.path, PYTHONPATH picks the tree
        child = subprocess.run([sys.executable, str(CHILD), str(result), *args], env=env, cwd=tree,
                               capture_output=True, text=True)
        wall = time.perf_counter() - started
        if child.returncode != 0 or not result.exists():
            tail = (child.stderr.strip().splitlines() or [""])[-1][:200]
            return {"exit": child.returncode, "error": tail, "wall s": wall}
        measured = json.loads(result.read_text())
    accuracy = None
    try:  # a --before tree may write an older schema: `manifests.read` upgrades it
        accuracy = manifests.read(home / "runs" / name, manifests.RunManifest).metrics.validation.accuracy
    except (EdgekitError, AttributeError):  # no metrics recorded: the row keeps its memory figures
        pass
    return {"exit": 0, "peak MB": measured["peak_mb"], **{f"{k} MB": v for k, v in measured["phases_mb"].items()},
            "wall s": wall, "val_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="2000,5000,20000")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--before", action="append", default=[], help="git revision to measure beside this tree")
    parser.add_argument("--out", type=Path, default=RESULTS / "cache_epoch_memory.json")
    args = parser.parse_args()
    trees = {"this tree": ROOT, **{revision: export_tree(revision) for revision in args.before}}
    counts = [int(c) for c in args.images.split(",")]
    source = photo_folder(max(counts), 320, 240)
    load = os.getloadavg()
    rows: list[dict] = []
    command = " ".join(["benchmarks/cache_epoch_memory.py", *sys.argv[1:]])
    record = environment()

    def save() -> None:
        save_result(args.out, {"environment": record, "command": command, "before": args.before,
                               "load_average_end": os.getloadavg()[0], "rows": rows}, load)

    with tempfile.TemporaryDirectory(dir=WORK) as scratch:
        for count in counts:
            folder = subset_folder(source, count)
            for run in RUNS:
                for name, tree in trees.items():
                    # one home per tree and size: the cached run reuses what the first one made
                    home = Path(scratch) / f"{name.replace(' ', '-')}-{count}"
                    row = {"tree": name, "images": count, "run": run, "image_size": args.image_size,
                           **train_once(tree, folder, args.image_size, home, run),
                           "load_average": os.getloadavg()[0]}
                    rows.append(row)
                    print(f"{name} {count} images, {run}: peak {row.get('peak MB', float('nan')):.0f} MB "
                          f"({row.get('error') or 'ok'})", file=sys.stderr)
                    save()
    columns = ["tree", "images", "run", "peak MB", "load MB", "cache MB", "fit MB", "final MB", "other MB", "wall s",
               "val_accuracy"]
    print_table(sorted(rows, key=lambda r: (r["images"], RUNS.index(r["run"]))), columns)


if __name__ == "__main__":
    main()
