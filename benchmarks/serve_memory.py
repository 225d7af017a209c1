"""usage: python benchmarks/serve_memory.py [--clients 8] [--before REV] [--out FILE.json]

Peak memory of the runner's `serve` under N concurrent maximum-size uploads, before and after the decode
cap. Each upload is a 40-megapixel PNG just under the default 10 MB body limit (PNG cannot be decoded at
a reduced DCT scale, so every accepted upload is decoded at full size: the worst case). Rows: the runner
at git revision REV (default: the merge base with main), and this tree's runner with its default
--max-decodes 2 and with --max-decodes N (no effective cap). Peak = VmHWM of the server process from
/proc after all requests finished; statuses count 200s and 503s. Prints a table; writes JSON (default
benchmarks/results/serve_memory.json) with the load average.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from _common import save_result
from PIL import Image

from edgekit.compat import keras, tf

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "edgekit" / "resources" / "devices" / "edgekit_runner.py"


def tiny_model(path: Path) -> Path:
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def big_png(limit_bytes: int) -> bytes:
    """A 7744x5164 (40.0 MP) smooth RGB PNG under `limit_bytes`."""
    width, height = 7744, 5164
    row = (np.arange(width, dtype=np.uint32) * 255 // width).astype(np.uint8)
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:] = row[None, :, None]
    pixels[:, :, 1] = (np.arange(height, dtype=np.uint32) * 255 // height).astype(np.uint8)[:, None]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
    data = buffer.getvalue()
    assert len(data) < limit_bytes, len(data)
    return data


def serve(runner: Path, model: Path, *args: str):
    process = subprocess.Popen([sys.executable, str(runner), "serve", str(model), "--port", "0", "--no-log", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    match = re.search(r"http://\S+:(\d+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"serve did not start: {line}{process.stderr.read()}")
    return process, int(match.group(1))


def peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def storm(port: int, body: bytes, clients: int) -> Counter:
    statuses: Counter = Counter()
    barrier = threading.Barrier(clients)

    def one():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        barrier.wait()
        try:
            connection.request("POST", "/predict", body=body)
            statuses[connection.getresponse().status] += 1
        except OSError as exc:
            statuses[type(exc).__name__] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def measure(name: str, runner: Path, model: Path, body: bytes, clients: int, *args: str) -> dict:
    process, port = serve(runner, model, *args)
    try:
        idle = peak_mb(process.pid)
        start = time.perf_counter()
        statuses = storm(port, body, clients)
        seconds = time.perf_counter() - start
        return {"runner": name, "options": " ".join(args), "clients": clients, "idle_peak_mb": round(idle, 1),
                "peak_mb": round(peak_mb(process.pid), 1), "statuses": dict(statuses), "seconds": round(seconds, 2)}
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--before", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_memory.json"))
    args = parser.parse_args()
    before = args.before or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
                                           capture_output=True, text=True).stdout.strip()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        old = workdir / "runner_before.py"
        old.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show",
                                        f"{before}:edgekit/resources/devices/edgekit_runner.py"],
                                       capture_output=True, check=True).stdout)
        model = tiny_model(workdir / "model.tflite")
        body = big_png(10 * 2**20)
        rows = [measure("before", old, model, body, args.clients),
                measure("after", RUNNER, model, body, args.clients),
                measure("after", RUNNER, model, body, args.clients, "--max-decodes", str(args.clients))]
    print(f"{args.clients} concurrent uploads of a 40 MP PNG ({len(body) / 2**20:.1f} MB)")
    print(f"{'runner':<8}{'options':<20}{'idle MB':>9}{'peak MB':>9}{'seconds':>9}  statuses")
    for r in rows:
        print(f"{r['runner']:<8}{r['options'] or 'defaults':<20}{r['idle_peak_mb']:>9.0f}{r['peak_mb']:>9.0f}"
              f"{r['seconds']:>9.1f}  {r['statuses']}")
    result = {"benchmark": "serve_memory", "before_revision": before, "upload_bytes": len(body),
              "upload": "7744x5164 RGB PNG", "load_average_start": list(load_start),
              "load_average_end": list(os.getloadavg()), "rows": rows}
    save_result(Path(args.out), result, load_start)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
