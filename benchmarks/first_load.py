"""usage: python benchmarks/first_load.py [--images 500] [--image-size 96] [--before TREE] [--out PATH]

Reads per file and wall time of a first and a second load of a new folder, as `train` loads it (scan,
hashes for the group-aware split, the pixel cache of the train and validation splits), for this tree and,
with --before, an older checkout of edgekit (e.g. `git worktree add /tmp/before <commit>`), side by side.

Each load runs in a fresh child process with a fresh EDGEKIT_HOME (the second load reuses the first's
home). Wall time is measured without tracing; reads per file are counted in a second, traced run
(`strace -f -e trace=open,openat`: every open of an image file for reading, Python's and TensorFlow's).
The folder is benchmarks/_images.jpeg_folder: 256x256 JPEGs in ten classes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ROOT, print_table, save_result  # noqa: E402

CHILD = """
import sys, time
import edgekit
print(edgekit.__file__)
from edgekit.data import DataSpec, iter_pixel_batches, load_dataset
started = time.perf_counter()
splits = load_dataset(DataSpec(data=sys.argv[1], image_size=int(sys.argv[2])))
for split in (splits.train, splits.validation):
    for _ in iter_pixel_batches(split, int(sys.argv[2])):
        pass
print(time.perf_counter() - started)
"""


def load(tree: Path, folder: Path, size: int, home: Path, trace: Path | None) -> float:
    """Seconds for one load in a child process (the child's own clock: imports excluded)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "EDGEKIT_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-c", CHILD, str(folder), str(size)]
    if trace is not None:
        command = ["strace", "-f", "-qq", "-s", "4096", "-e", "trace=open,openat", "-o", str(trace), *command]
    # run from the home's parent: from a checkout's root, `-c` would import that checkout's edgekit (or the
    # editable install's) instead of PYTHONPATH's
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=home.parent)
    if not done.stdout.strip().splitlines()[0].startswith(str(tree)):
        raise RuntimeError(f"the child imported {done.stdout.splitlines()[0]}, not {tree}")
    return float(done.stdout.strip().splitlines()[-1])


def reads_per_file(trace: Path, folder: Path) -> float:
    """Opens for reading of the folder's image files, per image file."""
    opened = Counter()
    pattern = re.compile(r'open(?:at)?\(.*?"([^"]+)", ([A-Z_|]+)')
    for line in trace.read_text(errors="replace").splitlines():
        match = pattern.search(line)
        if match and match.group(1).startswith(str(folder)) and match.group(1).endswith(".jpg") \
                and "O_WRONLY" not in match.group(2) and "= -1" not in line:
            opened[match.group(1)] += 1
    images = list(folder.rglob("*.jpg"))
    return sum(opened.values()) / len(images)


def measure(name: str, tree: Path, folder: Path, size: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        home, traced = Path(work) / "home", Path(work) / "traced"
        first = load(tree, folder, size, home, None)
        second = load(tree, folder, size, home, None)
        load(tree, folder, size, traced, Path(work) / "first.trace")
        load(tree, folder, size, traced, Path(work) / "second.trace")
        return {"tree": name, "first_load_s": first, "second_load_s": second,
                "reads_per_file_first": reads_per_file(Path(work) / "first.trace", folder),
                "reads_per_file_second": reads_per_file(Path(work) / "second.trace", folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--before", type=Path, help="an older edgekit checkout to compare with")
    parser.add_argument("--out", type=Path, default=RESULTS / "first_load.json")
    args = parser.parse_args()
    load_start = os.getloadavg()
    from _images import jpeg_folder

    folder = jpeg_folder(args.images).resolve()
    rows = []
    if args.before is not None:
        rows.append(measure(f"before ({args.before})", args.before.resolve(), folder, args.image_size))
    rows.append(measure("this tree", ROOT, folder, args.image_size))
    print_table(rows, ["tree", "first_load_s", "second_load_s", "reads_per_file_first", "reads_per_file_second"])
    save_result(args.out, {"benchmark": "first_load", "images": args.images, "image_size": args.image_size,
                           "folder": str(folder), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "load_average_start": list(load_start), "load_average_end": list(os.getloadavg()),
                           "cores": len(os.sched_getaffinity(0)), "rows": rows}, load_start)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
