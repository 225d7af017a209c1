"""Usage: .venv/bin/python benchmarks/serve_load.py [--model M.tflite] [--requests 400] [--concurrency 2] [--quick]

Requests per second and latency percentiles of `edgekit_runner.py serve` on 127.0.0.1, from a bounded
load loop (a fixed number of POST /predict requests from a few client threads), with SQLite logging on
and off side by side. Traffic goes to 127.0.0.1 only and the loop stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import io
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import ROOT, WORK, print_table, write_json
from PIL import Image

RUNNER = ROOT / "devices" / "edgekit_runner.py"
DEFAULT_MODEL = WORK / "runs" / "digits-default" / "compressed" / "int8-ptq" / "model.tflite"


def start_server(model: Path, log: bool, db: Path) -> tuple[subprocess.Popen, int]:
    args = [sys.executable, str(RUNNER), "serve", str(model), "--port", "0", "--db", str(db)]
    proc = subprocess.Popen(args + ([] if log else ["--no-log"]), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    proc.kill()
    raise SystemExit("serve_load: the runner did not start serving within 60 s")


def png_bodies(count: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


def load_loop(port: int, bodies: list[bytes], requests: int, concurrency: int) -> dict:
    def worker(indices: range) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        times = []
        for i in indices:
            started = time.perf_counter()
            conn.request("POST", "/predict", body=bodies[i % len(bodies)], headers={"Content-Type": "image/png"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"serve_load: /predict answered {response.status}")
            times.append((time.perf_counter() - started) * 1000)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        return times

    per_worker = [range(w, requests, concurrency) for w in range(concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for chunk in pool.map(worker, per_worker) for t in chunk]
    wall = time.perf_counter() - started
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"requests": len(latencies), "wall_s": wall, "rps": len(latencies) / wall, "p50_ms": float(p50),
            "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(max(latencies))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"serve_load: {args.model}: no such model; run `edgekit compress --int8` or pass --model")
    requests = 100 if args.quick else args.requests
    bodies = png_bodies(16, 96)
    results = {}
    scratch = WORK / "serve_load"
    scratch.mkdir(parents=True, exist_ok=True)
    for round_index in range(2):  # interleave logging on / off, keep the second (warm) round
        for log in (True, False):
            db = scratch / f"runner-{log}-{round_index}.db"
            proc, port = start_server(args.model, log, db)
            try:
                results[f"logging {'on' if log else 'off'}"] = load_loop(port, bodies, requests, args.concurrency)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    rows = [{"server": name, **{k: round(v, 2) for k, v in r.items()}} for name, r in results.items()]
    print_table(rows, ["server", "requests", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms"])
    write_json("serve_load_quick" if args.quick else "serve_load",
               {"model": str(args.model), "concurrency": args.concurrency, "results": results})


if __name__ == "__main__":
    main()
