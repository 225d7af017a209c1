"""Shared pieces of the side-by-side benchmarks: where things live, the environment record, the
table and the JSON result file. Importing this module imports no TensorFlow (only environment() does),
so drivers that measure child processes stay small themselves.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"
RESULTS = ROOT / "benchmarks" / "results"


def environment() -> dict:
    import numpy as np
    import PIL
    import scipy

    from edgekit.bench.report import cpu_model
    from edgekit.compat import keras, tf

    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "tensorflow": tf.__version__,
        "tf_keras": keras.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tf_threads": "default (intra/inter-op = cores)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def print_table(rows: list[dict], columns: list[str]) -> None:
    def cell(value) -> str:
        return f"{value:.2f}" if isinstance(value, float) else ("" if value is None else str(value))

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2) + "\n")
    return path


def save_result(out: Path, result: dict, load_start: tuple) -> None:
    """Write one benchmark's JSON to `out` and say where, with the load average at start and end."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}  (load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f})",
          file=sys.stderr)
