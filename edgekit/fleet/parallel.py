"""Run one function per device on a thread pool: a slow or broken device never holds up or stops the rest.

Threads, not processes: the work is waiting on ssh/subprocesses, and results stay plain Python objects.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edgekit.config import PARALLEL
from edgekit.errors import EdgekitError


@dataclass
class DeviceOutcome:
    device: str
    ok: bool
    value: object
    error: str | None
    seconds: float


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if isinstance(exc, EdgekitError):
        return text[0] if text else "failed"
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


def for_each_device(devices: list, fn: Callable[[object], object], *, parallel: int, label: str,
                    progress=None) -> list[DeviceOutcome]:
    """`fn(device)` for every device, at most `parallel` at once; outcomes in the order given.

    Each finished device prints one progress line on stderr (`progress` may replace the stream);
    any exception becomes a failed outcome with a one-line error.
    """
    PARALLEL.check(parallel, "--parallel")
    stream = progress if progress is not None else sys.stderr
    lock = threading.Lock()
    done = [0]
    total = len(devices)

    def run(device) -> DeviceOutcome:
        started = time.monotonic()
        try:
            outcome = DeviceOutcome(device.name, True, fn(device), None, 0.0)
        except Exception as exc:  # noqa: BLE001 - one device's failure, whatever it is, is that device's
            outcome = DeviceOutcome(device.name, False, None, _one_line(exc), 0.0)
        outcome.seconds = round(time.monotonic() - started, 3)
        with lock:
            done[0] += 1
            status = "ok" if outcome.ok else f"FAILED: {outcome.error}"
            print(f"[{done[0]}/{total}] {label} {device.name}: {status} ({outcome.seconds:.1f} s)",
                  file=stream, flush=True)
        return outcome

    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=min(parallel, total), thread_name_prefix=f"fleet-{label}") as pool:
        return list(pool.map(run, devices))
