"""Training's memory does not grow with the dataset: a first run (scan, staged pixels, the pixel cache
filled) and an epoch read from the cache, measured on two dataset sizes in child processes.

Each child reports its own peak resident memory (VmHWM; ru_maxrss in a child starts from the parent's
peak on Linux). The shuffle buffer and the shards are made small so that the larger dataset is many
buffers and shards long, as a 20,000-image dataset is at 96 px; the margin is generous (a few MB of
per-file bookkeeping are allowed), and what it catches is growth of the order of the pixels themselves:
a writer, a scan or a pipeline that keeps every image's pixels.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data import filecache, pixelcache

SIZE = 64  # 48 KiB of float32 pixels per image
SMALL, LARGE = 500, 3000  # the larger holds 120 MiB more pixels than the smaller

CHILD = """
import json, sys
from pathlib import Path

def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

from edgekit.data import DataSpec, load_dataset, make_pipeline, pipeline, pixelcache
pipeline.SHUFFLE_BYTES = 4 << 20  # 85 images at 64 px: the larger dataset is 28 buffers long
pixelcache.SHARD_BYTES = 1 << 20  # 21 images a shard
if sys.argv[3] == "no-release":  # the code before the fix, to show the test sees the difference
    pixelcache.release_freed_memory = lambda: None
folder, size = sys.argv[1], int(sys.argv[2])
splits = load_dataset(DataSpec(data=folder, image_size=size, validation_fraction=0.1))
seen = 0
for epoch in range(2):
    for x, _ in make_pipeline(splits.train, size, 32, training=True, seed=0):
        seen += len(x)
print(json.dumps({"peak_mb": peak_mb(), "seen": seen}))
"""


def _folder(root: Path, count: int) -> Path:
    """`count` tiny JPEGs in two classes: cheap to decode, 48 KiB of pixels each at SIZE."""
    rng = np.random.default_rng(count)
    for index in range(count):
        folder = root / f"c{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{index:05d}.jpg")
    return root


def _peak(folder: Path, home: Path, mode: str = "") -> float:
    env = {**os.environ, "EDGEKIT_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(SIZE), mode], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_first_run_and_epoch_memory_do_not_grow_with_the_dataset(tmp_path):
    small = _peak(_folder(tmp_path / "small", SMALL), tmp_path / "home-small")
    large = _peak(_folder(tmp_path / "large", LARGE), tmp_path / "home-large")
    pixels_mb = (LARGE - SMALL) * SIZE * SIZE * 3 * 4 / 2**20
    # measured: +9 MB (+15 MB without the per-shard heap trim: too small to tell apart at this scale, which
    # the per-shard test below covers); +127 MB when the scan kept every image's pixels
    assert large - small < 40, f"peak {small:.0f} MB at {SMALL} images, {large:.0f} MB at {LARGE} " \
                               f"({pixels_mb:.0f} MB more pixels)"


def test_release_freed_memory_is_called_for_every_shard_read(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pixelcache, "release_freed_memory", lambda: calls.append(1))
    data = np.zeros((2, 4, 4, 3), np.float32).tobytes()
    shard = tmp_path / "shard-00000.f32"
    shard.write_bytes(data)
    import xxhash

    for _ in range(3):
        pixelcache.read_shard(str(shard), xxhash.xxh3_64_hexdigest(data), 4)
    assert len(calls) == 3
    pixelcache.release_freed_memory()  # the real one, whatever the C library: never raises


def test_cache_writer_keeps_no_batch_it_has_written(tmp_path, monkeypatch):
    """The entry is streamed to its shards: a batch the writer has taken is garbage once the next is asked for."""
    monkeypatch.setattr(pixelcache, "decoder_fingerprint", lambda sources: "test")  # no TensorFlow to import
    alive: list[weakref.ref] = []

    def batches():
        for _ in range(12):
            gc.collect()
            assert sum(ref() is not None for ref in alive) <= 1, "the writer keeps earlier batches alive"
            batch = np.full((16, 8, 8, 3), 1.0, np.float32)
            alive.append(weakref.ref(batch))
            yield batch
            del batch

    paths = []
    for index in range(12 * 16):
        paths.append(str(tmp_path / f"{index}.png"))
        Path(paths[-1]).touch()
    entry = pixelcache.open_or_build(paths, [True] * len(paths), 8, batches, [Path(pixelcache.__file__)])
    assert entry is not None and sum(int(s["n"]) for s in entry.shards) == len(paths)


def test_bounded_map_keeps_order_and_a_bounded_number_of_calls_in_flight():
    lock, state = threading.Lock(), {"submitted": 0, "consumed": 0, "most": 0}

    def work(item):
        return item * 2

    def items():
        for item in range(200):
            with lock:
                state["submitted"] += 1
                state["most"] = max(state["most"], state["submitted"] - state["consumed"])
            yield item

    with ThreadPoolExecutor(max_workers=4) as pool:
        out = []
        for result in filecache.bounded_map(pool, work, items(), 8):
            with lock:
                state["consumed"] += 1
            out.append(result)
    assert out == [item * 2 for item in range(200)]
    assert state["most"] <= 9  # Executor.map would have submitted all 200 before the first result


def test_bounded_map_raises_the_first_error_and_cancels_the_rest():
    started = []
    gate = threading.Event()

    def work(item):
        started.append(item)
        if item == 0:
            raise ValueError("bad file")
        gate.wait(5)
        return item

    with ThreadPoolExecutor(max_workers=1) as pool:
        results = filecache.bounded_map(pool, work, range(100), 10)
        with pytest.raises(ValueError, match="bad file"):
            list(results)
        gate.set()
    assert len(started) <= 2  # the one that failed, perhaps the next; never the other 98
