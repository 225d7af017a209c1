"""usage: python benchmarks/large_dataset.py [--quick] [--images 1000,3000] [--photo 1600x1200] [--image-size 224]
                                          [--before REV] [--only after] [--eval-folders 250,1000] [--out FILE.json]

Datasets at real scale, before and after the decode-once cache and streaming (issue 15): wall time and
peak memory of the real CLI commands on a generated folder of full-size JPEGs, at two or more dataset
sizes. Per size, in this order: `train --epochs 1` (first: fresh scan and decode), `train --epochs 1`
again on the same folder (second: a later command), `eval` and `compress --int8` of the first run.
Each command is one child process; its peak memory is that child's own maximum RSS (os.wait4), and
the two code trees alternate command by command so they share the machine's load. "before" is the
tree of git revision REV (default: the branch's merge base with main), exported with `git archive`
into benchmarks/work/; "after" is this tree. Each tree gets a fresh EDGEKIT_HOME per size.
Photos are generated once into benchmarks/work/ (smooth colour fields plus sensor-like noise, ten
classes by hue); the model is MobileNetV2 alpha 0.35 from scratch (`--weights none`: no download).
--eval-folders N,M: then `eval RUN --data FOLDER` of folders of N and M photos, twice each, with the
runs of the first --images size: memory against dataset size for a command without training state.
--quick: 300 and 900 photos of 1024x768 at 96 px (about five minutes on a quiet 2-core machine).
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ROOT, WORK, print_table, write_json  # noqa: E402

CLASSES = 10
COMMANDS = ("train (first)", "train (second)", "eval", "compress --int8")


def _photo(args: tuple[Path, int, int, int]) -> None:
    """One noisy, smooth photo whose hue says its class; about 2x the JPEG size of flat test images."""
    from PIL import Image

    path, index, width, height = args
    rng = np.random.default_rng(index)
    hue = (index % CLASSES) / CLASSES
    base = np.array([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)]) * 70 + 128
    field = rng.normal(base, 40, (6, 8, 3)).clip(0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(field).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, (height, 1, 3), dtype=np.int16) + rng.integers(-12, 13, (1, width, 3),
                                                                                 dtype=np.int16)
    Image.fromarray((image + noise).clip(0, 255).astype(np.uint8)).save(path, quality=90)


def photo_folder(count: int, width: int, height: int) -> Path:
    root = WORK / f"photos-{count}-{width}x{height}"
    if (root / ".complete").exists():
        return root
    jobs = []
    for index in range(count):
        folder = root / f"class{index % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{index:06d}.jpg", index, width, height))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_photo, jobs, chunksize=32))
    (root / ".complete").write_text(f"{count}\n")
    print(f"generated {count} photos of {width}x{height} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return root


def export_tree(revision: str) -> Path:
    """The edgekit package of `revision`, extracted once (no worktree, nothing else touched)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", revision], check=True, capture_output=True,
                         text=True).stdout.strip()
    target = WORK / f"edgekit-{sha[:10]}"
    if not (target / "edgekit" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "edgekit"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run(tree: Path, home: Path, args: list[str]) -> dict:
    """One CLI command in a child process: wall seconds, that child's own peak RSS (wait4), exit code."""
    env = {**os.environ, "PYTHONPATH": str(tree), "EDGEKIT_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-c", "from edgekit.cli import app; app()", "--quiet", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        # cwd=tree: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH
        child = subprocess.Popen(command, env=env, stdout=out, stderr=err, cwd=tree)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = child.returncode
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "exit": code,  # ru_maxrss is KiB on Linux
            "error": (stderr.strip().splitlines() or [""])[-1][:200] if code else None, "stdout": stdout}


def commands(folder: Path, runs: Path, size: int) -> dict[str, list[str]]:
    train = ["train", "--data", str(folder), "--image-size", str(size), "--epochs", "1", "--weights", "none",
             "--alpha", "0.35", "--batch-size", "64", "--runs-dir", str(runs), "--json"]
    return {
        "train (first)": [*train, "--name", "first"],
        "train (second)": [*train, "--name", "second"],
        "eval": ["eval", str(runs / "first"), "--json"],
        "compress --int8": ["compress", str(runs / "first"), "--int8", "--json"],
    }


def measure(count: int, photo: tuple[int, int], size: int, trees: dict[str, Path], save) -> list[dict]:
    folder = photo_folder(count, *photo)
    homes = {}
    for name in trees:
        homes[name] = WORK / f"large-home-{name}-{count}"
        shutil.rmtree(homes[name], ignore_errors=True)
        homes[name].mkdir(parents=True)
    rows = []
    for label in COMMANDS:
        for name, tree in trees.items():
            result = run(tree, homes[name], commands(folder, homes[name] / "runs", size)[label])
            row = {"images": count, "tree": name, "command": label, "wall s": result["wall_s"],
                   "peak MB": result["peak_rss_mb"], "exit": result["exit"], "error": result["error"],
                   "load": round(os.getloadavg()[0], 1)}
            if label.startswith("train") and result["exit"] == 0:
                training = json.loads(result["stdout"])["training"]
                row["fit s"] = training["fit_seconds"]
            rows.append(row)
            save(rows)  # after every command: an interrupted run keeps what it measured
            print(f"{count} {name:6} {label:16} {row['wall s']:7.1f} s  {row['peak MB'] or 0:7.0f} MB  "
                  f"exit {row['exit']}  load {row['load']}", file=sys.stderr)
    for name in trees:
        cache = homes[name] / "cache"
        if cache.exists():
            disk = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
            rows.append({"images": count, "tree": name, "command": "cache on disk", "peak MB": disk / 2**20})
    return rows


def measure_eval_folders(run_images: int, counts: list[int], photo: tuple[int, int],
                         trees: dict[str, Path], save) -> list[dict]:
    """`eval RUN --data FOLDER` of growing folders with the run trained on `run_images` photos: what the
    memory of a command that holds no training state does as the dataset grows; each twice (first: scan
    and decode, second: both caches)."""
    rows = []
    for count in counts:
        folder = photo_folder(count, *photo)
        for attempt in ("first", "second"):
            for name, tree in trees.items():
                home = WORK / f"large-home-{name}-{run_images}"
                result = run(tree, home, ["eval", str(home / "runs" / "first"), "--data", str(folder),
                                          "--out", str(home / f"eval-{count}"), "--json"])
                row = {"images": count, "tree": name, "command": f"eval --data ({attempt})",
                       "wall s": result["wall_s"], "peak MB": result["peak_rss_mb"], "exit": result["exit"],
                       "error": result["error"], "load": round(os.getloadavg()[0], 1)}
                rows.append(row)
                save(rows)
                print(f"{count} {name:6} {row['command']:22} {row['wall s']:7.1f} s  {row['peak MB']:7.0f} MB  "
                      f"exit {row['exit']}  load {row['load']}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", default=None, help="comma-separated dataset sizes (default 1000,3000)")
    parser.add_argument("--photo", default=None, help="photo size WxH (default 1600x1200; 4000x3000 is 12 MP)")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default 224)")
    parser.add_argument("--before", default=None, help="git revision for 'before' (default: merge base with main)")
    parser.add_argument("--only", choices=("before", "after"), help="measure one tree only")
    parser.add_argument("--eval-folders", default=None,
                        help="only `eval --data` of these folder sizes (e.g. 250,1000), with the runs an "
                             "earlier call made for the first --images size")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    counts = [int(c) for c in (args.images or ("300,900" if args.quick else "1000,3000")).split(",")]
    width, height = (int(v) for v in (args.photo or ("1024x768" if args.quick else "1600x1200")).split("x"))
    size = args.image_size or (96 if args.quick else 224)
    before = args.before or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                           capture_output=True, text=True).stdout.strip()
    trees = {"before": export_tree(before), "after": ROOT}
    if args.only:
        trees = {args.only: trees[args.only]}
    settings = {"images": counts, "photo": f"{width}x{height}", "image_size": size, "before": before,
                "model": "MobileNetV2 alpha 0.35, weights none", "peak_MB": "child's own maximum RSS via wait4",
                "cache on disk row": "peak MB column holds the size of $EDGEKIT_HOME/cache in MiB"}
    name = Path(args.out).stem if args.out else ("large_dataset_quick" if args.quick else "large_dataset")
    done: list[dict] = []

    def save(rows: list[dict]) -> None:
        write_json(name, {"settings": settings, "rows": done + rows})

    if args.eval_folders:
        eval_counts = [int(c) for c in args.eval_folders.split(",")]
        done.extend(measure_eval_folders(counts[0], eval_counts, (width, height), trees, save))
    else:
        for count in counts:
            done.extend(measure(count, (width, height), size, trees, save))
    write_json(name, {"settings": settings, "rows": done})
    print_table(done, ["images", "tree", "command", "wall s", "fit s", "peak MB", "exit", "load"])
    print(f"wrote {RESULTS / (name + '.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
