"""`edgekit feedback export --select ...`: the field samples worth labelling first, from the fleet store.

Active learning in its plainest form: of everything the devices kept, the cases the model finds hard.

- `corrected`: samples a person labelled on the device (newest first); the label is the correction.
- `disagreement`: a correction that names another label than the model's answer, or a shadow candidate
  (`fleet rollout`) that disagreed with the serving model (see `shadow_disagreements`).
- `low-confidence`: top score below the threshold, lowest first.

Labelled samples go to `<out>/<label>/`, where `edgekit train --extra-data` picks them up. Samples nobody
has labelled yet go to `<out>/.to-label/<model's answer>/`: a hidden folder is never read as a class, so
nothing trains on the model's own guess; moving a file into `<out>/<true label>/` labels it. Every file is
listed in `selection.csv` with its device, score and where its label came from.

Labels and device names are a stranger's: a label becomes a folder only if it is one of the model's labels
and a plain name; sample bytes are read from the store by sha256 only.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from edgekit import manifests
from edgekit.artifacts import write_json_atomic, write_text_atomic
from edgekit.errors import EdgekitError
from edgekit.fleet.fetch import safe_label
from edgekit.fleet.store import Store, redact
from edgekit.render import csv_text

SELECTIONS = ("low-confidence", "disagreement", "corrected")
SHADOW_MATCH_S = 10.0
TO_LABEL = ".to-label"
_DEVICE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Latest correction per prediction (feedback ids grow per device log).
_LATEST = ("SELECT f.device, f.prediction_id, f.label FROM feedback f WHERE f.id = (SELECT max(g.id) FROM "
           "feedback g WHERE g.device = f.device AND g.db_id = f.db_id AND g.prediction_id = f.prediction_id)")
_COLUMNS = "p.device, p.id, p.model_sha256, p.top_label, p.top_score, p.sample_sha256, p.time"


def candidates(store: Store, select: str, *, threshold: float = 0.6, limit: int | None = None) -> list[dict]:
    """The chosen rows, hardest first: device, id, model, answer, score, sample sha256, correction (or None)."""
    if select not in SELECTIONS:
        raise EdgekitError(f"--select {select!r}: choose one of {', '.join(SELECTIONS)}")
    corrections = {(d, p): label for d, p, label in store.query(_LATEST)}
    if select == "low-confidence":
        rows = store.query(f"SELECT {_COLUMNS} FROM predictions p WHERE p.sample_sha256 IS NOT NULL AND "
                           "p.top_score < ? ORDER BY p.top_score, p.time DESC", (threshold,))
    else:
        disagreed = shadow_disagreements(store)
        rows = store.query(f"SELECT {_COLUMNS} FROM predictions p WHERE p.sample_sha256 IS NOT NULL "
                           "ORDER BY p.time DESC")
        if select == "corrected":
            rows = [r for r in rows if (r[0], r[1]) in corrections]
        else:
            rows = [r for r in rows if corrections.get((r[0], r[1]), r[3]) != r[3] or (r[0], r[1]) in disagreed]
    out, seen = [], set()
    for r in rows:  # the same bytes seen twice (a still camera) are labelled once: the hardest row speaks
        label = corrections.get((r[0], r[1]))
        if (r[5], label) in seen:
            continue
        seen.add((r[5], label))
        out.append({"device": r[0], "id": r[1], "model_sha256": r[2], "predicted": r[3], "score": r[4],
                    "sample": r[5], "time": r[6], "label": label})
    return out[:limit] if limit else out


def shadow_disagreements(store: Store, within_s: float = SHADOW_MATCH_S) -> set[tuple[str, str]]:
    """(device, prediction id) of the predictions a shadow candidate disagreed with.

    The runner's shadow rows do not name their prediction (the comparison runs beside serving, after it),
    so each is matched to the prediction of the same device and model with the same top-1 label and the
    very same top score (both come from one output vector) logged nearest in time, within `within_s`.
    """
    labels = {sha: json.loads(text) for sha, text in store.query("SELECT sha256, labels FROM models")}
    found = set()
    for device, text in store.query("SELECT device, row FROM shadow"):
        row = json.loads(text)
        if row.get("agree") != 0 or row.get("error"):
            continue
        if isinstance(row.get("prediction_id"), str):  # a runner that links them says so itself
            found.add((device, row["prediction_id"]))
            continue
        names, top = labels.get(row.get("model_sha256"), []), row.get("model_top")
        if not isinstance(top, int) or not 0 <= top < len(names) or not isinstance(row.get("time"), str):
            continue
        try:
            when = datetime.fromisoformat(row["time"])
        except ValueError:
            continue
        matches = store.query("SELECT id, time FROM predictions WHERE device = ? AND model_sha256 = ? AND "
                              "top_label = ? AND top_score = ? AND time >= ? AND time <= ?",
                              (device, row["model_sha256"], names[top], row.get("model_score"),
                               _iso(when - timedelta(seconds=within_s)), _iso(when + timedelta(seconds=within_s))))
        if matches:
            nearest = min(matches, key=lambda m: abs((datetime.fromisoformat(m[1]) - when).total_seconds()))
            found.add((device, nearest[0]))
    return found


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")


def export_selected(store: Store, out_dir: Path, select: str, *, threshold: float = 0.6,
                    limit: int | None = None) -> dict:
    """Write the selection as a class-folder dataset (plus .to-label/), a report and a manifest; atomic."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise EdgekitError(f"{out_dir}: exists and is not empty; pass a new --out folder")
    chosen = candidates(store, select, threshold=threshold, limit=limit)
    if not chosen:
        raise EdgekitError(f"--select {select}: no sample in the store {redact(store.url)} qualifies; run "
                           "`edgekit fleet pull FLEET.yaml` first, and keep samples on the devices (--save-below)")
    labels = {sha: set(json.loads(text)) for sha, text in store.query("SELECT sha256, labels FROM models")}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    listing, per_class, rejected, missing = [], Counter(), 0, 0
    try:
        for rank, row in enumerate(chosen, 1):
            sample = store.sample_bytes(row["sample"])
            if sample is None:
                missing += 1
                continue
            folder, source = _folder(row, labels.get(row["model_sha256"], set()))
            if folder is None:
                rejected += 1
                continue
            device = row["device"] if _DEVICE.match(row["device"]) else \
                hashlib.sha256(row["device"].encode()).hexdigest()[:12]
            name = f"{rank:05d}-{device}-{row['id'][:32]}.{sample[0]}"
            (scratch / folder).mkdir(parents=True, exist_ok=True)
            (scratch / folder / name).write_bytes(sample[1])
            per_class[folder] += 1
            listing.append([f"{folder}/{name}", row["device"], row["id"], row["predicted"], f"{row['score']:.4f}",
                            row["label"] or "", source, row["sample"]])
        report = _write_report(scratch, store, select, threshold, listing, per_class, rejected, missing)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        scratch.rename(out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _folder(row: dict, model_labels: set[str]) -> tuple[str | None, str]:
    """(relative folder, label source) for one sample; None when its label cannot be trusted."""
    try:
        if row["label"] is not None:
            label = safe_label(row["label"], "label")
            return (label, "correction") if label in model_labels else (None, "")
        guess = safe_label(row["predicted"], "label")
        return f"{TO_LABEL}/{guess}", "model (unconfirmed)"
    except ValueError:
        return None, ""


def _write_report(scratch: Path, store: Store, select: str, threshold: float, listing: list, per_class: Counter,
                  rejected: int, missing: int) -> dict:
    text = csv_text(["file", "device", "prediction_id", "predicted", "score", "label", "label_source", "sha256"],
                    listing)
    write_text_atomic(scratch / "selection.csv", text)
    labelled = sum(n for folder, n in per_class.items() if not folder.startswith(TO_LABEL))
    report = {"select": select, "threshold": threshold if select == "low-confidence" else None,
              "written": len(listing), "labelled": labelled, "to_label": len(listing) - labelled,
              "per_class": dict(sorted(per_class.items())), "rejected_labels": rejected,
              "samples_missing": missing, "store": redact(store.url)}
    write_json_atomic(scratch / "feedback_report.json", report)
    digest = hashlib.sha256(text.encode()).hexdigest()
    parent = manifests.ParentRef(path=redact(store.url), sha256=digest, kind="fleet-store", file="selection.csv")
    manifests.write(scratch, manifests.FeedbackDatasetManifest(report=report, parents=(parent,)),
                    ["selection.csv", "feedback_report.json"])
    return report
