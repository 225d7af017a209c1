"""usage: python benchmarks/runner_per_image.py [--size 96] [--images 24] [--rounds 30] [--before REV] [--out FILE.json]

The runner's whole `classify` path per JPEG (decode, resize, quantize, invoke, rank; no log) against a bare
`interpreter.invoke()` at one model size, before and after a change, interleaved image by image: on a
shared machine the load then hits all three alike, which runner_overhead.py's pass-by-pass rounds do not
at 96 px, where one image costs ~3 ms. Also each runner's preprocessing alone, and whether the "after"
runner found the optional simplejpeg. Model: MobileNetV2 alpha 1.0, float32, random weights, 1 interpreter
thread; inputs: runner_overhead.py's 640x480 camera-like q90 JPEGs. Prints p10/p25/p50 per configuration
and the ratios to bare at each; writes JSON (default benchmarks/results/runner_per_image.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import save_result
from runner_overhead import ROOT, RUNNER, camera_jpegs, load_runner, merge_base, mobilenet, runner_at

QUANTILES = (0.1, 0.25, 0.5)


def configs(runners: dict, path: Path, frames: list[bytes]) -> dict:
    """name -> function of an image index: bare invoke, then classify and preprocess of each runner."""
    models = {version: runner.Model(str(path), threads=1) for version, runner in runners.items()}
    after, model = runners["after"], models["after"]
    labels = [str(i) for i in range(model.num_outputs)]
    tensors = [after.preprocess(model, data, 40 * 10**6)[0] for data in frames]
    bare = model.runtime.interpreter(model_content=path.read_bytes(), num_threads=1)
    bare.allocate_tensors()
    inp, out = bare.get_input_details()[0], bare.get_output_details()[0]

    def bare_step(i):
        bare.set_tensor(inp["index"], tensors[i][None])
        bare.invoke()
        bare.get_tensor(out["index"])

    steps = {"bare": bare_step}
    for version, runner in runners.items():
        steps[version] = (lambda r, m: lambda i: r.classify_bytes(m, labels, frames[i], 3, 40 * 10**6))(
            runner, models[version])
        steps[f"{version} preprocess"] = (lambda r, m: lambda i: r.preprocess(m, frames[i], 40 * 10**6))(
            runner, models[version])
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--before", default=None, help="git revision of the 'before' runner (merge base with main)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "runner_per_image.json"))
    args = parser.parse_args()
    before = args.before or merge_base()
    load_start = os.getloadavg()
    frames = camera_jpegs(args.images)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        runners = {"before": runner_at(before, workdir), "after": load_runner(RUNNER, "runner_after")}
        path = workdir / f"mobilenetv2-1.0-{args.size}.tflite"
        path.write_bytes(mobilenet(args.size))
        steps = configs(runners, path, frames)
        times: dict[str, list[float]] = {name: [] for name in steps}
        for round_ in range(args.rounds + 1):  # round 0 warms up, untimed
            for i in range(len(frames)):
                for name, step in steps.items():
                    start = time.perf_counter()
                    step(i)
                    if round_:
                        times[name].append((time.perf_counter() - start) * 1e3)
    rows = []
    for q in QUANTILES:
        ms = {name: sorted(values)[int(len(values) * q)] for name, values in times.items()}
        rows.append({"quantile": q, "ms": ms, "ratio_before": ms["before"] / ms["bare"],
                     "ratio_after": ms["after"] / ms["bare"]})
        print(f"p{int(q * 100):<3}" + "".join(f"  {name} {value:.3f}" for name, value in ms.items())
              + f"  | ratio to bare: before {rows[-1]['ratio_before']:.2f}, after {rows[-1]['ratio_after']:.2f}")
    fast = runners["after"].simplejpeg_module() if hasattr(runners["after"], "simplejpeg_module") else None
    result = {"benchmark": "runner_per_image", "before_revision": before, "size": args.size,
              "images": {"count": args.images, "size": [480, 640, 3], "format": "JPEG q90"},
              "rounds": args.rounds, "after_simplejpeg": getattr(fast, "__version__", None),
              "environment": {**runners["after"].device_info(), "load_average_start": list(load_start),
                              "load_average_end": list(os.getloadavg())},
              "rows": rows}
    save_result(Path(args.out), result, load_start)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
