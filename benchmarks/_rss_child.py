"""usage: python benchmarks/_rss_child.py RESULT.json edgekit-cli-args...

One edgekit command in this process, with this process's own peak resident memory measured per phase and
written to RESULT.json. The peak is the kernel's high-water mark of this process (`VmHWM` in
/proc/self/status), reset at each phase boundary by writing 5 to /proc/self/clear_refs; not
`getrusage`, whose `ru_maxrss` in a child on Linux starts from its parent's peak (the mm a vfork/exec
leaves behind is the parent's). Phases are marked by wrapping the functions that run them (present in
trees from before and after the one-pass change alike): `load` (scan, hashes, split), `cache` (the pixel
cache entry, built on a first run), `fit` (Keras fit minus the cache) and `final` (evaluation, saving).
"""

from __future__ import annotations

import functools
import json
import sys
import threading
from pathlib import Path

_LOCK = threading.Lock()
PEAKS: dict[str, float] = {}
STACK: list[str] = ["other"]  # imports, the model, anything outside the phases below


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _close_phase() -> None:
    """Charge the peak since the last boundary to the phase running, then restart the high-water mark."""
    phase = STACK[-1]
    PEAKS[phase] = max(PEAKS.get(phase, 0.0), _status_mb("VmHWM"))
    Path("/proc/self/clear_refs").write_text("5")


def phase(name: str, function):
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with _LOCK:
            _close_phase()
            STACK.append(name)
        try:
            return function(*args, **kwargs)
        finally:
            with _LOCK:
                _close_phase()
                STACK.pop()

    return wrapped


def main() -> None:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    from edgekit import train
    from edgekit.cli import app
    from edgekit.data import pixelcache

    train.load_dataset = phase("load", train.load_dataset)
    train._fit_phases = phase("fit", train._fit_phases)
    train._write_run = phase("final", train._write_run)
    pixelcache.open_or_build = phase("cache", pixelcache.open_or_build)
    code = 0
    try:
        app(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        with _LOCK:
            _close_phase()
        out.write_text(json.dumps({"exit": code, "peak_mb": max(PEAKS.values()),
                                   "phases_mb": {k: round(v, 1) for k, v in PEAKS.items()}}))
    sys.exit(code)


if __name__ == "__main__":
    main()
