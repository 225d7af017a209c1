"""Simulated fleets for the field-data tests: device work directories with filled runner logs, listed in a
fleet file (local devices, and devices over the loopback sshd)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from edgekit.fleet import simulate

LABELS = ["cat", "dog", "bird"]
MODEL_SHA = "ab" * 32


def reference(n: int = 2000, seed: int = 99) -> dict:
    """The drift reference of the simulated model: the same distribution `synthetic_answers` draws from."""
    from dataclasses import asdict

    import numpy as np

    from edgekit.fleet.drift import ReferenceBuilder

    answers = simulate.synthetic_answers(n, LABELS, seed=seed)
    probs = np.zeros((n, len(LABELS)), np.float32)
    for i, (score, cls) in enumerate(answers):
        probs[i, :] = (1 - score) / (len(LABELS) - 1) * 0.999
        probs[i, cls] = score
    builder = ReferenceBuilder(tuple(LABELS))
    builder.add(probs)
    return asdict(builder.result())


def make_fleet(root: Path, local=("a", "b"), ssh=(), sshd=None, rows: int = 150, with_reference: bool = True,
               **add) -> Path:
    """fleet.yaml plus one work directory per device, each with `rows` predictions; returns the fleet file."""
    devices = {}
    for index, name in enumerate([*local, *ssh]):
        workdir = root / "devices" / name
        db = simulate.install(workdir, MODEL_SHA, LABELS, variant="sim-int8",
                              drift_reference=reference() if with_reference else None)
        if rows:
            simulate.add_rows(db, MODEL_SHA, LABELS, simulate.synthetic_answers(rows, LABELS, seed=index),
                              seed=index, **add)
        if name in ssh:
            devices[name] = {k: v for k, v in sshd.profile(workdir, python=sys.executable).items()
                             if k not in ("description", "threads")}
        else:
            devices[name] = {"connection": "local", "workdir": str(workdir), "python": sys.executable}
    path = root / "fleet.yaml"
    path.write_text(yaml.safe_dump({"name": "test-fleet", "devices": devices}))
    return path


def log_path(root: Path, name: str) -> Path:
    return simulate.model_dir(root / "devices" / name, MODEL_SHA) / "edgekit_runner.db"
