"""usage: [RSS_TIMELINE=rss.json] [SHUFFLE_MB=64] [ARENA_MAX=2] python benchmarks/_rss_timeline.py RESULT.json ARGS...

benchmarks/_rss_child.py (per-phase peaks) with three optional probes, as used for benchmarks/README.md
section 15's second look: ARENA_MAX calls glibc's `mallopt(M_ARENA_MAX, n)` before anything else runs (the
in-process form of the `MALLOC_ARENA_MAX` variable); SHUFFLE_MB replaces the training shuffle buffer's cap;
RSS_TIMELINE samples this process's `VmRSS` every 0.5 s and marks Keras's epoch and validation boundaries
(by wrapping `CSVLogger`'s hooks, which `train` always installs), written as [seconds, MB, mark] rows at exit.
A diagnosis tool, not a measurement the README's tables depend on.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import runpy
import threading
import time
from pathlib import Path

M_ARENA_MAX = -8  # glibc malloc.h
HOOKS = ("on_epoch_begin", "on_epoch_end", "on_test_begin", "on_test_end")


def rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/self/status has no VmRSS")


def record_timeline(out: Path) -> None:
    started, rows = time.time(), []

    def mark(name) -> None:
        rows.append([round(time.time() - started, 1), rss_mb(), name])

    def sample() -> None:
        while True:
            mark("")
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    from edgekit.compat import keras

    def marked(hook: str):
        original = getattr(keras.callbacks.CSVLogger, hook)

        def wrapped(self, *args, **kwargs):
            mark(hook)
            return original(self, *args, **kwargs)

        return wrapped

    for hook in HOOKS:
        setattr(keras.callbacks.CSVLogger, hook, marked(hook))
    atexit.register(lambda: out.write_text(json.dumps(rows)))


def main() -> None:
    if os.environ.get("ARENA_MAX"):
        if ctypes.CDLL(None).mallopt(M_ARENA_MAX, int(os.environ["ARENA_MAX"])) != 1:
            raise SystemExit("mallopt(M_ARENA_MAX) failed (not glibc?)")
    if os.environ.get("RSS_TIMELINE"):
        record_timeline(Path(os.environ["RSS_TIMELINE"]))
    if os.environ.get("SHUFFLE_MB"):
        from edgekit.data import pipeline

        pipeline.SHUFFLE_BYTES = int(os.environ["SHUFFLE_MB"]) << 20
    runpy.run_path(str(Path(__file__).resolve().parent / "_rss_child.py"), run_name="__main__")


if __name__ == "__main__":
    main()
