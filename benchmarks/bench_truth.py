"""usage: python benchmarks/bench_truth.py --run RUN_DIR [--tflite-runtime-python PY] [--rounds 3]

Does `edgekit bench` tell the truth? Three side-by-side measurements (issue 10):

1. Models edgekit did not make (built here: two inputs, int8 I/O conv net, non-image dense; no
   manifest): edgekit's p50 (the runner in a child process, generated inputs) against a bare
   `set_tensor` + `invoke` loop in this process on the same inputs, same thread count, interleaved rounds.
2. Host vs device accuracy of RUN_DIR's int8 variant(s): the device pass under LiteRT (this machine) and
   under tflite-runtime (a local venv, `--tflite-runtime-python`, a "device" with another runtime),
   with the output difference in quantization steps.
3. Peak memory the runner reports when started from a parent holding 1 GiB: main's runner
   (getrusage, before) against this branch's (VmHWM, after), same model, same parent.

Prints tables; writes benchmarks/results/bench_truth.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, environment, print_table, write_json

sys.path.insert(0, str(ROOT / "tests"))

from edgekit.bench import inputs as bench_inputs  # noqa: E402
from edgekit.bench import run as bench_run  # noqa: E402
from edgekit.bench.rows import BenchRow  # noqa: E402
from edgekit.devices import parse_profile  # noqa: E402
from edgekit.runner import load_model  # noqa: E402
from edgekit.tflite import parse_file  # noqa: E402

QUICK = {"runs": 200, "warmup": 10, "min_seconds": 1.0}


def bare_p50(path: Path, feed, runs: int, threads: int) -> float:
    """A bare invoke loop on the same generated inputs: what `benchmark_model` would time."""
    interpreter = load_model(path, threads=threads, raw=True).interpreter
    details = interpreter.get_input_details()
    count = len(next(iter(feed.tensors.values())))
    samples = [[feed.tensors[f"input_{i}"][n] for i in range(len(details))] for n in range(count)]
    times = []
    for k in range(runs + 10):
        for detail, value in zip(details, samples[k % count]):
            interpreter.set_tensor(detail["index"], value)
        start = time.perf_counter()
        interpreter.invoke()
        if k >= 10:
            times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50))


def edgekit_p50(path: Path, profile, threads: int) -> BenchRow:
    settings = bench_run.BenchSettings(threads=(threads,), **QUICK)
    [row] = bench_run.run_bench(bench_run.collect_variants([path]), profile, settings).rows
    return row


def overhead(models: dict, profile, rounds: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, path in models.items():
            feed = bench_inputs.generated(parse_file(path), Path(scratch) / f"{name}.npz", 16)
            ours, bare = [], []
            for _ in range(rounds):  # interleaved: load on the shared machine hits both sides alike
                row = edgekit_p50(path, profile, 1)
                ours.append(row.latency_ms.p50)
                bare.append(bare_p50(path, feed, QUICK["runs"], 1))
            rows.append({"model": name, "inputs": len(parse_file(path).inputs),
                         "edgekit_p50_us": 1e3 * statistics.median(ours), "bare_p50_us": 1e3 * statistics.median(bare),
                         "ratio": statistics.median(ours) / statistics.median(bare)})
    return rows


def accuracy_rows(run: Path, profiles: list) -> list[dict]:
    rows = []
    variants = [v for v in bench_run.collect_variants([run]) if bench_run.convert_mode(v) == "int8"]
    for profile in profiles:
        settings = bench_run.BenchSettings(threads=(1,), runs=20, warmup=2, min_seconds=0.2,
                                           accuracy_samples=10**6)  # the whole validation split
        for row in bench_run.run_bench(variants, profile, settings).rows:
            check = row.accuracy_check
            steps = check.output_check if check else None
            rows.append({"variant": row.variant, "device": profile.name,
                         "runtime": f"{row.ran.runtime} {row.ran.runtime_version}",
                         "samples": check and check.samples, "host_acc": check and check.host_accuracy,
                         "device_acc": check and check.device_accuracy, "max_steps": steps and steps.max_steps,
                         "top1_flips": steps and steps.top1_flips, "status": row.status, "error": row.error})
    return rows


def peak_memory(run: Path, profile) -> list[dict]:
    """Runner figures from a parent holding 1 GiB: main's runner vs this one (same model, same parent)."""
    git = ["git", "-C", str(ROOT)]
    base = subprocess.run([*git, "merge-base", "HEAD", "main"], capture_output=True, text=True, check=True)
    old = subprocess.run([*git, "show", f"{base.stdout.strip()}:edgekit/resources/devices/edgekit_runner.py"],
                         capture_output=True, check=True).stdout
    variants = [v for v in bench_run.collect_variants([run]) if bench_run.convert_mode(v) == "int8"][:1]
    ballast = np.ones(2**27)  # 1 GiB, touched
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        old_runner = Path(scratch) / "edgekit_runner.py"
        old_runner.write_bytes(old)
        current = bench_run.runner_path
        for label, runner in (("before (main: getrusage)", old_runner), ("after (VmHWM)", current())):
            bench_run.runner_path = lambda runner=runner: runner
            try:
                [row] = bench_run.run_bench(variants, profile, bench_run.BenchSettings(
                    threads=(1,), runs=20, warmup=2, min_seconds=0.2)).rows
            finally:
                bench_run.runner_path = current
            rows.append({"runner": label, "variant": row.variant, "peak_rss_mb": row.peak_rss_mb,
                         "parent_holds_mb": round(ballast.nbytes / 2**20), "status": row.status})
    return rows


def local_profile(name: str, python: str, runtime: str):
    data = {"name": name, "description": f"{runtime} on this machine", "arch": "any", "connection": "local",
            "python": python, "runtime": runtime, "threads": 1}
    return parse_profile(Path(f"{name}.yaml"), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--run", type=Path, required=True, help="an edgekit run with an int8 variant")
    parser.add_argument("--tflite-runtime-python", default="/tmp/tflrt/bin/python")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import foreign

    litert = local_profile("desktop-litert", sys.executable, "litert")
    tflrt = local_profile("venv-tflite-runtime", args.tflite_runtime_python, "tflite_runtime")
    with tempfile.TemporaryDirectory() as models_dir:
        models = foreign.build_all(Path(models_dir))
        print(f"load before: {environment()['load_average']}", file=sys.stderr)
        first = overhead(models, litert, args.rounds)
    print_table(first, ["model", "inputs", "edgekit_p50_us", "bare_p50_us", "ratio"])
    second = accuracy_rows(args.run, [litert, tflrt])
    print_table(second, ["variant", "device", "runtime", "samples", "host_acc", "device_acc", "max_steps",
                         "top1_flips", "status"])
    third = peak_memory(args.run, litert)
    print_table(third, ["runner", "variant", "parent_holds_mb", "peak_rss_mb", "status"])
    path = write_json("bench_truth", {"overhead": first, "accuracy": second, "peak_memory": third,
                                      "settings": {**QUICK, "threads": 1, "rounds": args.rounds}})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
