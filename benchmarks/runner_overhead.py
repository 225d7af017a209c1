"""usage: python benchmarks/runner_overhead.py [--images 24] [--rounds 5] [--before REV] [--live-frames 150]
                                             [--out FILE.json]

What the on-device runner costs per image on top of a bare `interpreter.invoke()` loop, before and after a
change, side by side in one run (rounds interleave the configurations so both see the same machine
load; the table gives the median round, and the best round's ratios are printed and saved too).
Models: MobileNetV2 alpha 1.0 at 224x224 and 96x96, float32, random weights (no download), 1 interpreter
thread. Inputs: 640x480 camera-like JPEGs (q90). "before" is the runner file at git revision REV (default:
the merge base with main), "after" the working tree's. Columns, in ms per image: bare = set_tensor + invoke
+ get_tensor on ready tensors; no log = the whole `classify` path per JPEG (decode, resize, quantize,
rank), one image after the other; logged = the same plus the SQLite row as `classify` writes it by default
(before: synchronous=FULL, one fsync per row; after: grouped fsync every 1 s), no sample; +sample = logged
and the JPEG kept under samples/ (what a low-confidence image costs); dir = `classify DIR` itself over the
JPEG files, logged, which decodes the next file on a second thread while invoking this one (after only).
Then frames per second of `live` (each runner that has it) on a 640x480 MJPG video at 224 px (logging on
change of label; after this change it reads and resizes the next frame on a second thread), and each
stage alone (fastest of --stage-repeats tries) with the ratio those minimums imply. Prints a table;
writes JSON (default benchmarks/results/runner_overhead.json) with versions, CPU and load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from _common import save_result
from PIL import Image

from edgekit.compat import keras, tf

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "edgekit" / "resources" / "devices" / "edgekit_runner.py"
RUNNER_IN_GIT = "edgekit/resources/devices/edgekit_runner.py"


def load_runner(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runner_at(rev: str, workdir: Path):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{RUNNER_IN_GIT}"], capture_output=True,
                            check=True).stdout
    path = workdir / "runner_before.py"
    path.write_bytes(source)
    return load_runner(path, "runner_before")


def mobilenet(size: int) -> bytes:
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    body = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=1.0, include_top=False, weights=None)
    x = keras.layers.GlobalAveragePooling2D()(body(x))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def camera_jpegs(count: int) -> list[bytes]:
    """Smooth 640x480 scenes with noise, JPEG-encoded like a camera frame."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    frames = []
    for _ in range(count):
        a, b, c = rng.uniform(0.005, 0.03, 3)
        pixels = np.stack([np.sin(xx * a), np.cos(yy * b), np.sin((xx + yy) * c)], -1) * 100 + 128
        pixels += rng.normal(0, 12, pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        frames.append(buffer.getvalue())
    return frames


def open_log(runner, path: Path):
    """The log as `classify` opens it by default in that runner version."""
    try:
        log = runner.PredictionLog(str(path), sync_interval=1.0, keep_rows=100_000)
    except TypeError:  # the runner before grouped sync
        return runner.PredictionLog(str(path))
    log.start_writing()
    return log


def steps(runner, path: Path, content: bytes, frames: list[bytes], workdir: Path, tag: str) -> dict:
    """name -> (function of one item, items) for every configuration of one runner and model."""
    model = runner.Model(str(path), threads=1)
    labels = [str(i) for i in range(model.num_outputs)]
    tensors = [runner.preprocess(model, data, 40 * 10**6)[0] for data in frames]
    bare = model.runtime.interpreter(model_content=content, num_threads=1)
    bare.allocate_tensors()
    inp, out = bare.get_input_details()[0], bare.get_output_details()[0]

    def bare_step(tensor):
        bare.set_tensor(inp["index"], tensor[None])
        bare.invoke()
        bare.get_tensor(out["index"])

    rows_only = runner.Logger(open_log(runner, workdir / f"{tag}-rows.db"), model, save_below=0.0, save_all=False)
    samples = runner.Logger(open_log(runner, workdir / f"{tag}-samples.db"), model, save_below=0.0, save_all=True)

    def classify(logger):
        def step(data):
            result, image_format = runner.classify_bytes(model, labels, data, 3, 40 * 10**6)
            if logger:
                logger("bench", result, data, image_format)
        return step

    configs = {"bare": (bare_step, tensors), "no log": (classify(None), frames),
               "logged": (classify(rows_only), frames), "+sample": (classify(samples), frames),
               "_logs": [rows_only.log, samples.log]}
    if hasattr(runner, "classify_files"):  # `classify DIR` itself: decodes the next file while invoking
        paths = []
        for n, data in enumerate(frames):
            paths.append((str(workdir / f"{tag}-{n:03d}.jpg"), False))
            Path(paths[-1][0]).write_bytes(data)
        pipelined = runner.Logger(open_log(runner, workdir / f"{tag}-dir.db"), model, save_below=0.0,
                                  save_all=False)

        def directory(batch):
            for _ in runner.classify_files(model, labels, pipelined, batch, 3, 40 * 10**6):
                pass

        configs["classify dir"] = (directory, [paths] * 1, len(paths))
        configs["_logs"].append(pipelined.log)
    return configs


def time_pass(step, items, per_item: int = 1) -> float:
    start = time.perf_counter()
    for item in items:
        step(item)
    return (time.perf_counter() - start) * 1e3 / (len(items) * per_item)


def measure(runners: dict, size: int, frames: list[bytes], rounds: int, workdir: Path) -> list[dict]:
    content = mobilenet(size)
    path = workdir / f"mobilenetv2-1.0-{size}.tflite"
    path.write_bytes(content)
    configs = {version: steps(runner, path, content, frames, workdir, f"{version}-{size}")
               for version, runner in runners.items()}
    timings = {(v, name): [] for v, c in configs.items() for name in c if not name.startswith("_")}
    for round_ in range(rounds + 1):  # round 0 warms up, untimed
        for (version, name), values in timings.items():
            ms = time_pass(*configs[version][name])
            if round_:
                values.append(ms)
    rows = []
    for version, config in configs.items():
        row = {"model": f"mobilenetv2-1.0-{size}-float32", "runner": version, "threads": 1}
        names = [name for name in config if not name.startswith("_")]
        row.update({name: statistics.median(timings[(version, name)]) for name in names})
        # the best round is the least disturbed by other processes on a shared machine
        row["best"] = {name: min(timings[(version, name)]) for name in names}
        row["best_ratio"] = {name: row["best"][name] / row["best"]["bare"] for name in names if name != "bare"}
        row.update(ratio_no_log=row["no log"] / row["bare"], ratio_logged=row["logged"] / row["bare"],
                   ratio_sample=row["+sample"] / row["bare"])
        if "classify dir" in row:
            row["ratio_classify_dir"] = row["classify dir"] / row["bare"]
        rows.append(row)
        for log in config["_logs"]:
            log.close()
    return rows


def live_fps(runners: dict, workdir: Path, frames: int, bare_ms: float) -> list[dict]:
    """`live` of each runner that has it on a 640x480 MJPG video at 224 px: frames per second over the
    whole file, and ms per frame against the bare invoke loop's (`bare_ms`, from the same run)."""
    import cv2

    video = workdir / "camera.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for data in camera_jpegs(30):
        writer.write(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    writer.release()
    rows = []
    for version, runner in runners.items():
        if hasattr(runner, "run_live"):
            row = live_run(runner, workdir, video, frames)
            rows.append({"runner": version, **row, "ms_per_frame": round(1e3 / row["fps"], 3),
                         "ratio_to_bare": round(1e3 / row["fps"] / bare_ms, 3)})
    return rows


def live_run(runner, workdir: Path, video: Path, frames: int) -> dict:
    model = runner.Model(str(workdir / "mobilenetv2-1.0-224.tflite"), threads=1)
    labels = [str(i) for i in range(model.num_outputs)]
    logger = runner.Logger(open_log(runner, workdir / f"live-{runner.__name__}.db"), model, save_below=0.0,
                           save_all=False)
    args = SimpleNamespace(source=str(video), existing=False, every=1, fps=None, log_policy="change", log_below=0.6,
                           top_k=3, max_megapixels=40.0, max_frames=0, duration=0)
    results = []
    for _ in range(max(1, frames // 30)):  # the 30-frame file, read again until `frames` frames were classified
        results.append(runner.run_live(args, model, labels, logger, runner.threading.Event()))
    logger.log.close()
    total = sum(r["frames"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    return {"video": "640x480 MJPG, 30 frames, read repeatedly", "model": "mobilenetv2-1.0-224-float32",
            "threads": 1, "frames": total, "seconds": round(seconds, 3), "fps": round(total / seconds, 2)}


def stage_minimums(runners: dict, workdir: Path, frames: list[bytes], repeats: int) -> list[dict]:
    """Each stage alone, the fastest of `repeats` tries: on a shared machine the minimum is the estimate
    least inflated by other processes. Estimated ratio = (preprocess + invoke + rank + log row) / invoke."""
    return [stage_row(runner, version, workdir / f"mobilenetv2-1.0-{size}.tflite", workdir, frames[0], repeats)
            for size in (224, 96) for version, runner in runners.items()]


def stage_row(runner, version: str, path: Path, workdir: Path, frame: bytes, repeats: int) -> dict:
    model = runner.Model(str(path), threads=1)
    labels = [str(i) for i in range(model.num_outputs)]
    log = open_log(runner, workdir / f"stages-{version}-{path.stem}.db")
    tensor = runner.preprocess(model, frame, 40 * 10**6)[0]
    result = runner.classify_bytes(model, labels, frame, 3, 40 * 10**6)[0]
    stages = {"preprocess": lambda: runner.preprocess(model, frame, 40 * 10**6),
              "invoke": lambda: model.run(tensor),
              "rank": lambda: runner.top_k(model.scores(model.run(tensor)[0]), labels, 3),
              "log row": lambda: log.log_prediction(model.sha256, "bench", result)}
    best = {}
    for name, stage in stages.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            stage()
            times.append((time.perf_counter() - start) * 1e3)
        best[name] = min(times)
    best["rank"] = max(best["rank"] - best["invoke"], 0.0)  # rank was timed with an invoke
    log.close()
    return {"model": path.stem + "-float32", "runner": version, "min_ms": best,
            "estimated_ratio_logged": sum(best.values()) / best["invoke"],
            "estimated_ratio_no_log": (sum(best.values()) - best["log row"]) / best["invoke"]}


def merge_base() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True, text=True)
    return done.stdout.strip() or "HEAD"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", default=None, help="git revision of the 'before' runner (merge base with main)")
    parser.add_argument("--live-frames", type=int, default=150)
    parser.add_argument("--stage-repeats", type=int, default=60, help="tries per stage for the minimums")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "runner_overhead.json"))
    args = parser.parse_args()
    before = args.before or merge_base()
    load_start = os.getloadavg()
    frames = camera_jpegs(args.images)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        runners = {"before": runner_at(before, workdir), "after": load_runner(RUNNER, "runner_after")}
        rows = []
        for size in (224, 96):
            print(f"converting and measuring MobileNetV2 1.0 at {size} px ...", file=sys.stderr, flush=True)
            rows += measure(runners, size, frames, args.rounds, workdir)
        bare_224 = next(r["bare"] for r in rows if r["runner"] == "after" and "-224-" in r["model"])
        live = live_fps(runners, workdir, args.live_frames, bare_224) if args.live_frames else []
        stages = stage_minimums(runners, workdir, frames, args.stage_repeats)
    print(f"{'model':<30}{'runner':>8}" + "".join(f"{c:>9}" for c in ("bare", "no log", "logged", "+sample"))
          + f"{'dir':>9}   ratio no log / logged / +sample / dir")
    for r in rows:
        directory = r.get("classify dir")
        print(f"{r['model']:<30}{r['runner']:>8}{r['bare']:>9.2f}{r['no log']:>9.2f}{r['logged']:>9.2f}"
              f"{r['+sample']:>9.2f}{directory or float('nan'):>9.2f}   {r['ratio_no_log']:.2f} / "
              f"{r['ratio_logged']:.2f} / {r['ratio_sample']:.2f} / {r.get('ratio_classify_dir', float('nan')):.2f}")
    print("best round (least disturbed), ratio to bare: " + "; ".join(
        f"{r['model'].split('-')[2]} px {r['runner']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["best_ratio"].items())
        for r in rows))
    for r in stages:
        print(f"{r['model']:<30}{r['runner']:>8}  stage minimums (ms): "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["min_ms"].items())
              + f"  -> ratio {r['estimated_ratio_no_log']:.2f} no log, {r['estimated_ratio_logged']:.2f} logged")
    for r in live:
        print(f"live ({r['runner']}): {r['frames']} frames of 640x480 video at 224 px in {r['seconds']} s = "
              f"{r['fps']} fps, {r['ms_per_frame']} ms a frame = {r['ratio_to_bare']:.2f}x the bare invoke")
    runtime = runners["after"].get_runtime(runners["after"].choose_runtime(None))
    result = {"benchmark": "runner_overhead", "before_revision": before,
              "images": {"count": args.images, "size": [480, 640, 3], "format": "JPEG q90"}, "rounds": args.rounds,
              "environment": {**runners["after"].device_info(), "runtime": {"name": runtime.name,
                                                                            "version": runtime.version},
                              "tensorflow": tf.__version__, "platform": platform.platform(),
                              "load_average_start": list(load_start), "load_average_end": list(os.getloadavg())},
              "rows": rows, "stage_minimums": stages, "live": live}
    save_result(Path(args.out), result, load_start)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
