"""usage: python benchmarks/train_throughput.py [--quick] [--images N] [--rounds R] [--out NAME]

Training images per second on CPU for the edgekit classifier (build_classifier + edgekit's compile +
fit) fed by edgekit's tf.data pipeline (make_pipeline, repeated) against the same model fed by
ImageDataGenerator.flow_from_directory with fit's defaults (one worker thread, a queue of 10), on
the same generated JPEG folder with the same augmentations as benchmarks/input_pipeline.py. One
model per configuration serves both sides and both run one traced train step (traced first on
IDG's batches, whose static shapes are unknown; edgekit's labels are cast to IDG's float32), so the
compute is identical. The first steps are untimed; each later fit call runs untimed warm-up steps,
then a fixed number of timed steps; the sides alternate over rounds and each cell is the median.
weights=None (random init, no download), every layer trainable, as `edgekit train --weights none`;
the full mode adds a frozen-body row (the head phase of `edgekit train` with imagenet weights),
where the input pipeline's share of the CPU is largest. Step counts at 224 px are tiny because one
alpha-1.0 step takes several seconds on 2 cores. --quick: 600 images, 0.35@96 and 1.0@96 (about two
minutes on an idle 2-core machine); full: 3,000 images, five configurations (about seven minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, write_json  # noqa: E402
from _images import BATCH, edgekit_images, edgekit_pipeline, idg_flow, jpeg_folder  # noqa: E402

from edgekit.compat import keras, tf  # noqa: E402
from edgekit.config import TrainConfig  # noqa: E402
from edgekit.model import (  # noqa: E402 - compile_for_training: the exact compile `edgekit train` uses
    ModelSpec,
    build_classifier,
    compile_for_training,
    set_body_trainable,
)


@dataclass(frozen=True)
class Setting:
    alpha: float
    image_size: int
    steps: int  # timed steps per fit call
    warmup: int  # untimed steps per fit call
    rounds: int
    frozen_body: bool = False

    @property
    def name(self) -> str:
        return f"{self.alpha}@{self.image_size}" + (" frozen body" if self.frozen_body else "")


# The model is the bottleneck in every setting (both pipelines produce a 96 px batch in well under a
# step), so the producers' queues stay full and one or two untimed steps per fit call are enough.
QUICK = [Setting(0.35, 96, 6, 2, 2), Setting(1.0, 96, 3, 2, 2)]
FULL = [Setting(0.35, 96, 12, 2, 2), Setting(0.35, 96, 12, 2, 2, frozen_body=True), Setting(1.0, 96, 6, 2, 2),
        Setting(0.35, 224, 3, 1, 1), Setting(1.0, 224, 2, 1, 1)]


T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class StepClock(keras.callbacks.Callback):
    """Wall and process CPU time at the end of every train step (the numpy logs force a sync)."""

    def on_train_begin(self, logs=None):
        self.marks = [(time.perf_counter(), time.process_time())]

    def on_train_batch_end(self, batch, logs=None):
        self.marks.append((time.perf_counter(), time.process_time()))


def timed_fit(model, data, setting: Setting) -> dict:
    clock = StepClock()
    model.fit(data, steps_per_epoch=setting.warmup + setting.steps, epochs=1, verbose=0, callbacks=[clock])
    (wall0, cpu0), (wall1, cpu1) = clock.marks[setting.warmup], clock.marks[-1]
    images = setting.steps * BATCH
    return {"img/s": images / (wall1 - wall0), "cpu ms/img": 1000 * (cpu1 - cpu0) / images,
            "warmup s": wall0 - clock.marks[0][0]}


def build_model(setting: Setting, num_classes: int):
    model = build_classifier(ModelSpec(num_classes, setting.image_size, setting.alpha))
    if setting.frozen_body:
        set_body_trainable(model, None)
    compile_for_training(model, TrainConfig().learning_rate)
    return model


def measure(setting: Setting, sources: dict) -> dict:
    progress(f"{setting.name}: building the model")
    model = build_model(setting, sources["classes"])
    trace_s = {}
    # IDG first: its batches have unknown static shapes, so its trace also serves edgekit's batches
    # (float32 labels), and both sides then run the very same train-step graph.
    for side in ("idg", "edgekit"):
        progress(f"{setting.name}: first step, {side} (tracing)")
        start = time.perf_counter()
        model.fit(sources[side], steps_per_epoch=1, epochs=1, verbose=0)
        trace_s[side] = time.perf_counter() - start
    runs: dict[str, list[dict]] = {"edgekit": [], "idg": []}
    for r in range(setting.rounds):
        for side in (("edgekit", "idg") if r % 2 == 0 else ("idg", "edgekit")):
            progress(f"{setting.name}: round {r + 1}, {side}")
            runs[side].append(timed_fit(model, sources[side], setting))
    med = {side: {k: statistics.median(run[k] for run in got) for k in ("img/s", "cpu ms/img")}
           for side, got in runs.items()}
    return {"config": setting.name, "alpha": setting.alpha, "image size": setting.image_size,
            "frozen body": setting.frozen_body, "timed steps": setting.steps, "warm-up steps": setting.warmup,
            "rounds": setting.rounds, "first step s": sum(trace_s.values()), "first steps": trace_s,
            "edgekit img/s": med["edgekit"]["img/s"], "IDG img/s": med["idg"]["img/s"],
            "speed-up x": med["edgekit"]["img/s"] / med["idg"]["img/s"],
            "edgekit cpu ms/img": med["edgekit"]["cpu ms/img"], "IDG cpu ms/img": med["idg"]["cpu ms/img"],
            "runs": runs}


def sources_for(folder: Path, image_size: int) -> dict:
    images = edgekit_images(folder, image_size)
    # IDG yields float32 labels; the same dtype here lets both sides share one traced train step
    ds = edgekit_pipeline(images, image_size).map(lambda x, y: (x, tf.cast(y, tf.float32))).repeat()
    return {"edgekit": ds, "idg": idg_flow(folder, image_size), "classes": len(images.labels)}


def run_setting(setting: Setting, folder: Path, cache: dict) -> dict:
    """One configuration; a failure becomes an error row rather than ending the benchmark."""
    try:
        if setting.image_size not in cache:
            cache.clear()  # one image size's cached pixels at a time (1.8 GB at 224 px)
            progress(f"scanning {folder.name} for {setting.image_size} px")
            cache[setting.image_size] = sources_for(folder, setting.image_size)
        row = measure(setting, cache[setting.image_size])
    except Exception as exc:  # noqa: BLE001 - any failure is reported in the row
        row = {"config": setting.name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    progress(f"{setting.name}: speed-up {row['speed-up x']:.2f}" if "error" not in row else row["error"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 2)[2])
    parser.add_argument("--quick", action="store_true", help="600 images, 0.35@96 and 1.0@96 only")
    parser.add_argument("--images", type=int, help="JPEGs in the folder (default 3000, quick 600)")
    parser.add_argument("--rounds", type=int, help="override the rounds per configuration")
    parser.add_argument("--out", help="result name under benchmarks/results/ (default train_throughput[_quick])")
    args = parser.parse_args()
    count = args.images or (600 if args.quick else 3000)
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = [dataclasses.replace(s, rounds=args.rounds) for s in settings]
    folder = jpeg_folder(count)
    load_before = list(os.getloadavg())
    cache: dict = {}
    rows = [run_setting(s, folder, cache) for s in settings]
    print_table(rows, ["config", "timed steps", "rounds", "first step s", "edgekit img/s", "IDG img/s",
                       "speed-up x", "edgekit cpu ms/img", "IDG cpu ms/img", "error"])
    name = args.out or ("train_throughput_quick" if args.quick else "train_throughput")
    path = write_json(name, {
        "benchmark": "train_throughput", "quick": args.quick, "batch": BATCH,
        "source_images": f"{count} JPEG 256x256 q90 in {folder.name}", "load_average_before": load_before,
        "notes": {"timing": "per fit call: warm-up steps untimed, then timed steps; StepClock marks each step end",
                  "first step s": "the first fit step of each side (tracing, on IDG's side) plus filling "
                                  "edgekit's cache the first time an image size is used",
                  "graph": "one train-step trace shared by both sides, made from IDG's batches (unknown "
                           "height/width); edgekit's own `edgekit train` traces with static shapes",
                  "idg fit": "Sequence input with fit defaults (workers=1, use_multiprocessing=False, "
                             "max_queue_size=10)",
                  "cpu ms/img": "process CPU time (all threads: model, tf.data, IDG worker) per trained image"},
        "results": rows,
    })
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
