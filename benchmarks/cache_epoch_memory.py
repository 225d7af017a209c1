"""usage: python benchmarks/cache_epoch_memory.py [--images 4000,8000,16000] [--image-size 96] [--before REV]

Peak memory of one training epoch read from the decode-once pixel cache, against the number of images:
the input pipeline alone (`data.make_pipeline(training=True)`, shuffle buffer included, no model), so
a figure that grows with the dataset is the pipeline's and nothing else's. Each size runs in its own
child process; its peak is that child's own maximum RSS (wait4). The images are the first N of a
generated folder of 320x240 photos (benchmarks/large_dataset.py makes the same ones), cached on the
first child, measured in a second one. With --before REV, that revision's edgekit runs each size too, alternating
with this tree (26f61ac read whole shards and sliced them). Prints a table; writes
benchmarks/results/cache_epoch_memory.json.
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

from _common import ROOT, WORK, print_table, write_json  # noqa: E402
from large_dataset import export_tree, photo_folder  # noqa: E402

CHILD = """
import json, sys, time
import numpy as np
from edgekit.data import DataSpec, load_dataset, make_pipeline
folder, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
train = load_dataset(DataSpec(data=folder, image_size=size)).train
train = train.subset(np.arange(min(count, len(train))))
started, seen = time.perf_counter(), 0
for x, _ in make_pipeline(train, size, 64, training=True, seed=0):
    seen += len(x)
print(json.dumps({"images": seen, "epoch_s": time.perf_counter() - started}))
"""


def epoch(tree: Path, folder: Path, size: int, count: int, home: Path) -> dict:
    """One child builds the cache entry (and the scan and hash caches); a fresh child is measured."""
    _child(tree, folder, size, count, home)
    return _child(tree, folder, size, count, home)


def _child(tree: Path, folder: Path, size: int, count: int, home: Path) -> dict:
    env = {**os.environ, "EDGEKIT_HOME": str(home), "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(size), str(count)], env=env,
                                 stdout=out, stderr=subprocess.DEVNULL, cwd=tree)
        _, status, usage = os.wait4(child.pid, 0)
        out.seek(0)
        lines = out.read().strip().splitlines()
    if os.waitstatus_to_exitcode(status) != 0 or not lines:
        raise SystemExit(f"the epoch over {count} images failed (exit {os.waitstatus_to_exitcode(status)})")
    return {**json.loads(lines[-1]), "peak MB": usage.ru_maxrss / 1024}  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="4000,8000,16000")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--before", default=None, help="git revision to measure beside this tree")
    args = parser.parse_args()
    trees = {"after": ROOT, **({"before": export_tree(args.before)} if args.before else {})}
    counts = [int(c) for c in args.images.split(",")]
    # the training split is 80% of the folder: make it large enough for the largest count
    folder = photo_folder(max(20000, int(max(counts) / 0.8)), 320, 240)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(dir=WORK) as home:
        for count in counts:
            for name, tree in trees.items():
                started = time.perf_counter()
                row = {"tree": name, "images": count, "image_size": args.image_size,
                       **epoch(tree, folder, args.image_size, count, Path(home))}
                row["wall s"] = time.perf_counter() - started
                rows.append(row)
                print(f"{name} {count} images: peak {row['peak MB']:.0f} MB, epoch {row['epoch_s']:.1f} s",
                      file=sys.stderr)
    print_table(rows, ["tree", "images", "image_size", "peak MB", "epoch_s", "wall s"])
    write_json("cache_epoch_memory", {"before": args.before, "load_average_start": load,
                                      "load_average_end": os.getloadavg()[0], "rows": rows})


if __name__ == "__main__":
    main()
