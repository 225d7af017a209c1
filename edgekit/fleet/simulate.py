"""Simulated devices: work directories laid out as `edgekit deploy` leaves them, with runner logs filled with
synthetic predictions, so the fleet loop (pull, status, export) is tried, tested and benchmarked on one
machine. Logs are written with the runner's own schema (`SCHEMA` from edgekit_runner.py), rows in bulk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from edgekit.devices import RUNNER_NAME, runner_module, runner_path


def model_dir(workdir: Path, model_sha: str) -> Path:
    return Path(workdir) / "models" / model_sha[:12]


def install(workdir: Path, model_sha: str, labels: list[str], *, variant: str = "sim",
            drift_reference: dict | None = None) -> Path:
    """The runner and a model folder (manifest naming the model, no .tflite needed); returns the log path."""
    workdir = Path(workdir)
    folder = model_dir(workdir, model_sha)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(runner_path(), workdir / RUNNER_NAME)
    manifest = {"kind": "variant", "name": variant, "files": {"model.tflite": {"sha256": model_sha, "size": 0}},
                "model": {"labels": labels}}
    if drift_reference is not None:
        manifest["drift_reference"] = drift_reference
    (folder / "manifest.json").write_text(json.dumps(manifest))
    db_path = folder / "edgekit_runner.db"
    runner = runner_module()
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for statement in runner.SCHEMA:
            db.execute(statement)
        db.execute("INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?)",
                   (model_sha, str((folder / "model.tflite").resolve()), json.dumps(labels), runner.utc_now()))
    db.close()
    return db_path


def synthetic_answers(n: int, labels: list[str], *, seed: int = 0, confidence: float = 0.85,
                      class_weights: list[float] | None = None) -> list[tuple[float, int]]:
    """(top score, class index) per row: scores from a Beta distribution with mean `confidence`."""
    rng = np.random.default_rng(seed)
    weights = np.asarray(class_weights or [1.0] * len(labels), dtype=np.float64)
    classes = rng.choice(len(labels), size=n, p=weights / weights.sum())
    scores = rng.beta(confidence * 8, (1 - confidence) * 8, size=n)
    return [(float(s), int(c)) for s, c in zip(scores, classes)]


def add_rows(db_path: Path, model_sha: str, labels: list[str], answers: list[tuple[float, int]], *,
             start: datetime | None = None, step_s: float = 10.0, sample_every: int = 0, sample_bytes: int = 2048,
             corrections_every: int = 0, seed: int = 0) -> list[str]:
    """Append predictions (and every Nth sample file and correction) to a runner log; returns their ids."""
    db_path = Path(db_path)
    start = start or datetime.now(timezone.utc) - timedelta(seconds=step_s * len(answers))
    rng = np.random.default_rng(seed)
    ids, rows, feedback = [], [], []
    for i, (score, cls) in enumerate(answers):
        prediction_id = uuid.uuid4().hex
        when = (start + timedelta(seconds=i * step_s)).isoformat(timespec="milliseconds")
        top_k = [{"label": labels[cls], "index": cls, "score": round(score, 6)}]
        latency = {"preprocess": 2.0, "invoke": float(rng.gamma(9.0, 1.5)), "postprocess": 0.05}
        image_path = image_size = None
        if sample_every and i % sample_every == 0:
            data = hashlib.sha256(f"{seed}-{i // 2}".encode()).digest() * (sample_bytes // 32)  # pairs repeat
            image_path, image_size = f"samples/{prediction_id}.jpg", len(data)
            (db_path.parent / "samples").mkdir(exist_ok=True)
            (db_path.parent / image_path).write_bytes(data)
        rows.append((prediction_id, when, model_sha, "sim", json.dumps(top_k), json.dumps(latency), image_path,
                     image_size))
        if corrections_every and i % corrections_every == 0:
            feedback.append((prediction_id, labels[(cls + 1) % len(labels)], when, "cli"))
        ids.append(prediction_id)
    with sqlite3.connect(db_path) as db:
        db.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO feedback (prediction_id, label, time, source) VALUES (?, ?, ?, ?)", feedback)
    db.close()
    return ids
