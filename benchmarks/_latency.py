"""Latency pieces shared by latency_matrix.py and sparse_inference.py: one runner worker per
interpreter, cells timed in interleaved rounds (forward, then reversed) and summarised by medians.

Every number comes from the on-device runner's `bench` code path (the one `edgekit bench` uses), so a
row for LiteRT, tf.lite or tflite-runtime differs only in the interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import manifests
from edgekit.bench.run import BenchModel, bench_inputs

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "benchmarks" / "_bench_worker.py"
TFLITE_RUNTIME_VENV = ROOT / "benchmarks" / "work" / "venv-tflite-runtime"
TFLITE_RUNTIME_INSTALL = 'python3.11 -m venv {venv} && {venv}/bin/pip install tflite-runtime==2.14.0 "numpy<2"'


@dataclass
class Worker:
    """A `_bench_worker.py` process answering bench calls for one runtime."""

    runtime: str
    python: str
    process: subprocess.Popen | None = None
    problem: str | None = None
    version: str | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, cwd=ROOT)

    def bench(self, args: list) -> dict:
        self.process.stdin.write(json.dumps([str(a) for a in args]) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.runtime} worker died (exit {self.process.poll()})")
        return json.loads(line)

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


def _imports(python: str, module: str) -> str | None:
    """None when `python -c 'import module'` works, else the last line of its error."""
    try:
        result = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["failed"])[-1]


def workers(names: list[str]) -> list[Worker]:
    """A worker per requested runtime; tflite_runtime runs in its own venv because it needs numpy<2."""
    found = []
    for name in names:
        if name == "tflite_runtime":
            python = TFLITE_RUNTIME_VENV / "bin" / "python"
            if not python.exists():
                found.append(Worker(name, str(python), problem="not installed: "
                                    + TFLITE_RUNTIME_INSTALL.format(venv=TFLITE_RUNTIME_VENV)))
                continue
            problem = _imports(str(python), "tflite_runtime.interpreter")
            found.append(Worker(name, str(python), problem=problem and f"cannot import: {problem}"))
        else:
            module = {"litert": "ai_edge_litert", "tf.lite": "tensorflow"}[name]
            missing = importlib.util.find_spec(module) is None
            found.append(Worker(name, sys.executable, problem=f"{module} is not installed" if missing else None))
    for worker in found:
        if worker.problem is None:
            worker.start()
    return found


def images_for(variant_dir: Path, out: Path, count: int) -> Path:
    """Validation images at the variant's input size as the runner's .npz (same as `edgekit bench`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        manifest = manifests.read(variant_dir, manifests.VariantManifest)
        bench_inputs(BenchModel(manifest.name, variant_dir / "model.tflite", manifest), out, count)
    return out


@dataclass
class Cell:
    """One (model, runtime, threads) measurement, repeated over rounds."""

    key: tuple
    model: Path
    images: Path
    worker: Worker
    threads: int
    p50: list[float] = field(default_factory=list)
    p90: list[float] = field(default_factory=list)
    error: str | None = None
    runtime_version: str | None = None

    def summary(self) -> dict:
        if self.error and not self.p50:
            return {"status": "error", "error": self.error}
        return {"status": "ok", "p50_ms": statistics.median(self.p50), "p90_ms": statistics.median(self.p90),
                "rounds": len(self.p50), "p50_by_round": [round(v, 4) for v in self.p50],
                "runtime_version": self.runtime_version}


def run_rounds(cells: list[Cell], rounds: int, runs: int, min_seconds: float, warmup: int = 5,
               log=print) -> None:
    """Time every cell once per round; odd rounds go backwards so no cell always runs first or last."""
    for index in range(rounds):
        order = cells if index % 2 == 0 else cells[::-1]
        for cell in order:
            if cell.worker.problem:
                cell.error = cell.worker.problem
                continue
            args = ["bench", cell.model, "--images", cell.images, "--runtime", cell.worker.runtime, "--threads",
                    cell.threads, "--runs", runs, "--warmup", warmup, "--min-seconds", min_seconds, "--json"]
            try:
                report = cell.worker.bench(args)
            except (RuntimeError, ValueError, OSError) as exc:
                cell.error = str(exc)
                continue
            latency = report.get("latency_ms")
            if not latency:
                cell.error = report.get("error", "no latency reported")
                continue
            cell.p50.append(latency["p50"])
            cell.p90.append(latency["p90"])
            cell.runtime_version = (report.get("runtime") or {}).get("version")
        log(f"round {index + 1}/{rounds} done", file=sys.stderr)


def count_macs(path: Path) -> dict:
    """Multiply-accumulates per inference of the conv, depthwise and fully-connected ops in a .tflite.

    conv: output elements x kh x kw x input channels; depthwise: output elements x kh x kw (one input
    channel per output channel); fully connected: output elements x input features. Read from the
    interpreter's op and tensor details, so it is the graph as the runtime sees it.
    """
    from edgekit.runner import load_model

    interpreter = load_model(path, threads=1, raw=True).interpreter
    shapes = {t["index"]: [int(d) for d in t["shape"]] for t in interpreter.get_tensor_details()}
    macs = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 0, "FULLY_CONNECTED": 0}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only op listing the Python API offers
        name = op["op_name"]
        if name not in macs:
            continue
        out = int(np.prod(shapes[op["outputs"][0]]))
        kernel = shapes[op["inputs"][1]]
        if name == "CONV_2D":
            macs[name] += out * kernel[1] * kernel[2] * kernel[3]
        elif name == "DEPTHWISE_CONV_2D":
            macs[name] += out * kernel[1] * kernel[2]
        else:
            macs[name] += out * kernel[-1]
    macs["total"] = sum(macs.values())
    return macs


def cpu_peak() -> dict:
    """Peak int8 and float32 MAC rates from /proc/cpuinfo flags, with the assumption spelled out."""
    flags, mhz = set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    ghz = (mhz or 0) / 1000
    if {"avx512_vnni", "avx512bw"} <= flags:
        int8, how = 128, "AVX-512 VNNI: 2 x vpdpbusd (64 int8 MACs) per cycle"
    elif "avx_vnni" in flags or "avx512_vnni" in flags:
        int8, how = 64, "AVX-VNNI: 2 x 256-bit vpdpbusd (32 int8 MACs) per cycle"
    elif "avx512bw" in flags:
        int8, how = 128, "AVX-512BW: 2 x 512-bit vpmaddubsw (64 int8 MACs) per cycle"
    elif "avx2" in flags:
        int8, how = 64, "AVX2 without VNNI: 2 x 256-bit vpmaddubsw (32 int8 MACs into int16) per cycle"
    else:
        int8, how = 16, "SSE: 1 x 128-bit pmaddubsw per cycle"
    fp32 = 32 if "avx512f" in flags else (16 if "fma" in flags else 8)
    return {
        "cores": cores, "ghz": ghz, "flags_used": sorted(flags & {"avx2", "fma", "avx512f", "avx512bw",
                                                                 "avx512_vnni", "avx_vnni"}),
        "int8_macs_per_cycle_per_core": int8, "int8_peak_gmacs": int8 * ghz * cores,
        "fp32_macs_per_cycle_per_core": fp32, "fp32_peak_gmacs": fp32 * ghz * cores,
        "assumption": f"{how}; float32: {fp32} FMA lanes per cycle; clock = /proc/cpuinfo 'cpu MHz' "
                      f"({mhz} MHz, no boost assumed); all {cores} cores busy. int8 kernels that widen to "
                      "int16/int32 first (vpmaddwd) top out at half the int8 figure.",
    }
