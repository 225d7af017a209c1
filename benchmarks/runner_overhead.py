"""usage: python benchmarks/runner_overhead.py [--images 24] [--rounds 3] [--out FILE.json]

What the on-device runner costs per image on top of a bare `interpreter.invoke()` loop, on the same
model and the same inputs: the bare loop gets tensors preprocessed once, the runner decodes 640x480
JPEGs, resizes, quantizes, ranks and logs each one as `classify` does. Models are built here with
random weights (no download): a tiny 32x32 classifier like the tests' one and a MobileNetV2 (alpha
0.35, 96x96) in float32 and full-int8. Prints a table; writes the numbers as JSON (default
benchmarks/results/runner_overhead.json). Columns: bare = set_tensor + invoke + get_tensor on ready
tensors; run = the runner's locked Model.run on the same tensors; no log / logged = the whole
`classify` path per JPEG without / with the SQLite row (synchronous=FULL, so one fsync per image).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgekit.compat import keras, tf

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "edgekit" / "resources" / "devices" / "edgekit_runner.py"


def load_runner():
    spec = importlib.util.spec_from_file_location("edgekit_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def mobilenet_model():
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    body = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, include_top=False,
                                          weights=None)
    x = keras.layers.GlobalAveragePooling2D()(body(x))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def convert(model, int8: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        size = model.input_shape[1]
        rng = np.random.default_rng(0)

        def representative():
            for _ in range(16):
                yield [rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


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


def per_image_ms(step, items, rounds: int) -> float:
    """Median over rounds of the mean wall time per item; one untimed round first."""
    for item in items:
        step(item)
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            step(item)
        means.append((time.perf_counter() - start) * 1e3 / len(items))
    return statistics.median(means)


def measure(runner, name: str, content: bytes, frames: list[bytes], rounds: int, workdir: Path) -> dict:
    path = workdir / f"{name}.tflite"
    path.write_bytes(content)
    model = runner.Model(str(path))
    labels = [str(i) for i in range(model.num_outputs)]
    tensors = [runner.preprocess(model, data, 40 * 10**6)[0] for data in frames]

    bare = model.runtime.interpreter(model_content=content)  # a plain interpreter, as a script would use
    bare.allocate_tensors()
    inp, out = bare.get_input_details()[0], bare.get_output_details()[0]

    def bare_step(tensor):
        bare.set_tensor(inp["index"], tensor[None])
        bare.invoke()
        bare.get_tensor(out["index"])

    log = runner.PredictionLog(str(workdir / f"{name}.db"))
    log.register_model(model, labels)
    logged = runner.Logger(log, model, save_below=0.0, save_all=False)  # no samples: logging rows only
    splits = []

    def classify_step(data, with_log=True):
        result, image_format = runner.classify_bytes(model, labels, data, 3, 40 * 10**6)
        start = time.perf_counter()
        if with_log:
            logged("bench", result, data, image_format)
        splits.append({**result["latency_ms"], "log": (time.perf_counter() - start) * 1e3})

    row = {
        "model": name, "input": model.describe()["input"],
        "bare_invoke_loop_ms": per_image_ms(bare_step, tensors, rounds),
        "runner_run_ms": per_image_ms(lambda t: model.run(t), tensors, rounds),
        "classify_no_log_ms": per_image_ms(lambda d: classify_step(d, with_log=False), frames, rounds),
    }
    splits.clear()
    row["classify_logged_ms"] = per_image_ms(classify_step, frames, rounds)
    row["split_ms"] = {key: statistics.median(s[key] for s in splits) for key in splits[0]}
    row["ratio"] = row["classify_logged_ms"] / row["bare_invoke_loop_ms"]
    row["overhead_ms"] = row["classify_logged_ms"] - row["bare_invoke_loop_ms"]
    log.close()
    return row


def environment(runner) -> dict:
    info = runner.device_info()
    runtime = runner.get_runtime(runner.choose_runtime(None))
    return {**info, "runtime": {"name": runtime.name, "version": runtime.version},
            "threads": "runtime default", "tensorflow": tf.__version__, "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 2)[2])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "runner_overhead.json"))
    args = parser.parse_args()
    runner = load_runner()
    frames = camera_jpegs(args.images)
    mobilenet = mobilenet_model()
    builds = [("tiny-32-float32", tiny_model(), False), ("mobilenetv2-0.35-96-float32", mobilenet, False),
              ("mobilenetv2-0.35-96-int8", mobilenet, True)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, model, int8 in builds:
            print(f"converting and measuring {name} ...", file=sys.stderr, flush=True)
            rows.append(measure(runner, name, convert(model, int8), frames, args.rounds, Path(scratch)))
    columns = ("bare ms", "run ms", "no log", "logged")
    print(f"{'model':<30}" + "".join(f"{c:>9}" for c in columns) + f"{'ratio':>7}  split (median ms)")
    for r in rows:
        split = ", ".join(f"{k} {v:.2f}" for k, v in r["split_ms"].items())
        print(f"{r['model']:<30}{r['bare_invoke_loop_ms']:>9.3f}{r['runner_run_ms']:>9.3f}"
              f"{r['classify_no_log_ms']:>9.3f}{r['classify_logged_ms']:>9.3f}{r['ratio']:>7.1f}  {split}")
    result = {"benchmark": "runner_overhead", "images": {"count": args.images, "size": [480, 640, 3],
                                                         "format": "JPEG q90"},
              "rounds": args.rounds, "environment": environment(runner), "rows": rows,
              "runner_bytes": RUNNER.stat().st_size}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
