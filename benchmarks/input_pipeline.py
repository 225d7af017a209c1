"""usage: python benchmarks/input_pipeline.py [--quick] [--images N] [--image-size 96] [--rounds R] [--out FILE.json]

Images per second for one epoch of edgekit's tf.data pipeline (`load_dataset` + `make_pipeline`)
against Keras's `ImageDataGenerator.flow_from_directory`, on the same generated folder of 256x256
JPEGs, batch 32, the same augmentations (flip, rotation, zoom, translation; contrast off because
ImageDataGenerator has none) and bilinear resizing on both sides. Cold is the first epoch of a
fresh pipeline (edgekit: empty cache), warm its second epoch; the two sides alternate over R fresh
rounds and each cell is the median. Setup is edgekit's folder scan (a full Pillow decode of every
file) against IDG's directory listing. Files sit in the OS page cache on both sides, so cold means
process-cold, not disk-cold. The breakdown rows show where the time goes.
--quick: 600 images (about a minute); full: 3,000 images (about four minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, write_json  # noqa: E402
from _images import AUGMENT, BATCH, edgekit_images, edgekit_pipeline, idg_flow, idg_kwargs, jpeg_folder  # noqa: E402

from edgekit.compat import keras, tf  # noqa: E402
from edgekit.config import AugmentConfig  # noqa: E402
from edgekit.data import ImageSet, load_pixels, make_pipeline  # noqa: E402


def epoch(batches) -> dict:
    """Images per second (wall) and CPU milliseconds per image (all threads of this process).

    CPU time per image is what contention from other processes changes least, so it is recorded
    beside the wall-clock rate.
    """
    wall, cpu, count = time.perf_counter(), time.process_time(), 0
    for x, _ in batches:
        count += len(x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"img/s": count / wall, "cpu ms/img": 1000 * cpu / count, "images": count}


def idg_batches(flow):
    """One epoch of a Keras image iterator, pulled with next() as `fit` does."""
    return (next(flow) for _ in range(len(flow)))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def edgekit_round(folder: Path, size: int) -> tuple[dict, object]:
    """A fresh scan and pipeline (empty cache): setup, first epoch, second epoch."""
    images, setup = timed(lambda: edgekit_images(folder, size))
    ds = edgekit_pipeline(images, size)
    return {"setup": setup, "cold": epoch(ds), "warm": epoch(ds)}, images


def idg_round(folder: Path, size: int) -> dict:
    flow, setup = timed(lambda: idg_flow(folder, size))
    return {"setup": setup, "cold": epoch(idg_batches(flow)), "warm": epoch(idg_batches(flow))}


def summarize(name: str, runs: list[dict]) -> dict:
    med = statistics.median
    n = runs[0]["cold"]["images"]
    return {"pipeline": name, "setup s": med(r["setup"] for r in runs),
            "cold img/s": med(r["cold"]["img/s"] for r in runs),
            "cold+setup img/s": med(n / (r["setup"] + n / r["cold"]["img/s"]) for r in runs),
            "warm img/s": med(r["warm"]["img/s"] for r in runs),
            "cold cpu ms/img": med(r["cold"]["cpu ms/img"] for r in runs),
            "warm cpu ms/img": med(r["warm"]["cpu ms/img"] for r in runs), "runs": runs}


def speedup(ek: dict, idg: dict) -> dict:
    """edgekit/IDG for rates and IDG/edgekit for CPU costs, so above 1 always means edgekit wins."""
    row = {"pipeline": "edgekit speed-up x"}
    row.update({k: ek[k] / idg[k] for k in ("cold img/s", "cold+setup img/s", "warm img/s")})
    row.update({k: idg[k] / ek[k] for k in ("cold cpu ms/img", "warm cpu ms/img")})
    return row


def main_comparison(folder: Path, size: int, rounds: int) -> tuple[list[dict], object]:
    """Alternate fresh rounds of the two sides; each cell is the median over rounds."""
    runs: dict[str, list[dict]] = {"edgekit": [], "idg": []}
    images = None
    for r in range(rounds):
        for side in (("edgekit", "idg") if r % 2 == 0 else ("idg", "edgekit")):
            if side == "edgekit":
                run, images = edgekit_round(folder, size)
            else:
                run = idg_round(folder, size)
            runs[side].append(run)
    if runs["edgekit"][0]["cold"]["images"] != runs["idg"][0]["cold"]["images"]:
        raise SystemExit("the two pipelines read different numbers of images")
    ek, idg = summarize("edgekit tf.data", runs["edgekit"]), summarize("ImageDataGenerator", runs["idg"])
    return [ek, idg, speedup(ek, idg)], images


def breakdown(folder: Path, images, size: int, reps: int) -> list[dict]:
    """Cheap answers to 'where does the time go': decode+resize alone, augmentation alone, threads."""
    plain = make_pipeline(images, size, BATCH, cache=False)
    one_thread = tf.data.Options()
    one_thread.threading.private_threadpool_size = 1
    pixels = load_pixels(images, size)
    in_memory = keras.preprocessing.image.ImageDataGenerator(**idg_kwargs(AUGMENT)).flow(
        pixels, images.targets, batch_size=BATCH, shuffle=True, seed=0)
    augment_only = edgekit_pipeline(ImageSet(images.labels, images.targets, pixels=pixels.astype(np.uint8)), size)
    epoch(augment_only)  # fill the cache: the IDG side's arrays are already in memory
    off = AugmentConfig(enabled=False)
    stages = [
        ("decode + resize (no augment, no cache)", lambda: epoch(plain),
         lambda: epoch(idg_batches(idg_flow(folder, size, off)))),
        ("decode + resize, tf.data on 1 thread", lambda: epoch(plain.with_options(one_thread)), None),
        ("augment only (pixels already in memory)", lambda: epoch(augment_only),
         lambda: epoch(idg_batches(in_memory))),
        ("IDG with interpolation=nearest (tutorial default)", None,
         lambda: epoch(idg_batches(idg_flow(folder, size, interpolation="nearest")))),
    ]
    rows = []
    for stage, ek_fn, idg_fn in stages:
        got: dict[str, list[dict]] = {"edgekit": [], "IDG": []}
        for r in range(reps):
            for side, fn in (("edgekit", ek_fn), ("IDG", idg_fn))[:: 1 if r % 2 == 0 else -1]:
                if fn is not None:
                    got[side].append(fn())
        row = {"stage": stage}
        for side, measured in got.items():
            for key in ("img/s", "cpu ms/img"):
                row[f"{side} {key}"] = statistics.median(m[key] for m in measured) if measured else None
        if got["edgekit"] and got["IDG"]:
            row["speed-up x"] = row["edgekit img/s"] / row["IDG img/s"]
            row["cpu saving x"] = row["IDG cpu ms/img"] / row["edgekit cpu ms/img"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 2)[2])
    parser.add_argument("--quick", action="store_true", help="600 images instead of 3,000")
    parser.add_argument("--images", type=int, help="JPEGs in the folder (default 3000, quick 600)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--rounds", type=int, help="fresh rounds per side (default 3)")
    parser.add_argument("--out", help="result name under benchmarks/results/ (default input_pipeline[_quick])")
    args = parser.parse_args()
    count = args.images or (600 if args.quick else 3000)
    rounds = args.rounds or 3
    folder = jpeg_folder(count)
    print(f"{count} JPEGs in {folder}, image size {args.image_size}, batch {BATCH}", file=sys.stderr)
    load_before = list(os.getloadavg())
    rows, images = main_comparison(folder, args.image_size, rounds)
    print_table(rows, ["pipeline", "setup s", "cold img/s", "cold+setup img/s", "warm img/s", "cold cpu ms/img",
                       "warm cpu ms/img"])
    print()
    parts = breakdown(folder, images, args.image_size, reps=2 if args.quick else 3)
    print_table(parts, ["stage", "edgekit img/s", "IDG img/s", "speed-up x", "edgekit cpu ms/img", "IDG cpu ms/img",
                        "cpu saving x"])
    name = args.out or ("input_pipeline_quick" if args.quick else "input_pipeline")
    path = write_json(name, {
        "benchmark": "input_pipeline", "quick": args.quick, "image_size": args.image_size, "batch": BATCH,
        "rounds": rounds, "source_images": f"{count} JPEG 256x256 q90 in {folder.name}",
        "load_average_before": load_before,
        "notes": {"setup": "edgekit: load_dataset's folder scan, which fully decodes every file with Pillow "
                           "to reject corrupt images; IDG: listing the folder",
                  "cold": "first epoch of a fresh pipeline (edgekit: empty cache); files in the OS page cache",
                  "warm": "second epoch of the same pipeline", "cells": "median over alternating rounds"},
        "augment": {"edgekit": dataclasses.asdict(AUGMENT), "idg": idg_kwargs(AUGMENT)},
        "results": rows, "breakdown": parts, "target_ratio": 3.0,
    })
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
