"""The way back from the device: import the runner's SQLite log and export corrections as a dataset.

`import` snapshots a device database (with the sqlite3 backup API, so a live WAL database is read
consistently) together with its saved samples; `export` turns every correction that has its input image
into a class-folder dataset that `edgekit train --extra-data` folds into the next run.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path

from edgekit import manifests
from edgekit.artifacts import (
    check_writable,
    edgekit_home,
    sha256_file,
    visible_glob,
    write_json_atomic,
    write_text_atomic,
)
from edgekit.errors import EdgekitError
from edgekit.report import markdown_table

SNAPSHOT_DB = "device.db"


def feedback_home() -> Path:
    return edgekit_home() / "feedback"


def _connect_readonly(db_path: Path) -> sqlite3.Connection:
    if not db_path.is_file():
        raise EdgekitError(f"{db_path}: no such runner database")
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        conn.execute("SELECT count(*) FROM predictions").fetchone()
        return conn
    except sqlite3.DatabaseError as exc:
        raise EdgekitError(f"{db_path}: not a runner database ({exc}); pass the edgekit_runner.db from a device") \
            from None


def import_db(db_path: Path, name: str | None = None, samples_dir: Path | None = None) -> Path:
    """Snapshot a runner database and its samples under $EDGEKIT_HOME/feedback/<name>/."""
    db_path = Path(db_path)
    source = _connect_readonly(db_path)
    check_writable(feedback_home())
    name = name or f"{db_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    target = feedback_home() / name
    if target.exists():
        raise EdgekitError(f"{target}: an import with this name exists; pass another --name")
    scratch = target.with_name(f".{name}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        with sqlite3.connect(scratch / SNAPSHOT_DB) as copy:
            source.backup(copy)
        source.close()
        samples_dir = Path(samples_dir) if samples_dir else db_path.parent / "samples"
        if samples_dir.is_dir():
            shutil.copytree(samples_dir, scratch / "samples")
        counts = summarize(scratch / SNAPSHOT_DB)
        manifests.write(scratch, manifests.FeedbackImportManifest(source=str(db_path.resolve()), counts=counts),
                        [SNAPSHOT_DB])
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def summarize(db_path: Path) -> dict:
    conn = _connect_readonly(Path(db_path))
    with conn:
        predictions = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        feedback = conn.execute("SELECT count(*) FROM feedback").fetchone()[0]
        models = [row[0] for row in conn.execute("SELECT DISTINCT model_sha256 FROM predictions")]
    conn.close()
    return {"predictions": predictions, "feedback": feedback, "models": models}


def corrections(db_path: Path) -> list[dict]:
    """The latest correction per prediction, with what the model said and where its image is."""
    conn = _connect_readonly(db_path)
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        """SELECT p.id, p.model_sha256, p.top_k, p.image_path, f.label, f.time
           FROM feedback f JOIN predictions p ON p.id = f.prediction_id
           WHERE f.id = (SELECT max(id) FROM feedback WHERE prediction_id = f.prediction_id)
           ORDER BY f.id"""
    ).fetchall()
    conn.close()
    out = []
    for row in rows:
        top_k = json.loads(row["top_k"]) if row["top_k"] else []
        out.append({"id": row["id"], "model_sha256": row["model_sha256"], "label": row["label"],
                    "predicted": top_k[0]["label"] if top_k else None, "image_path": row["image_path"]})
    return out


def sample_file(import_dir: Path, image_path: str | None) -> Path | None:
    """Find a logged sample inside the import (device paths are relative to the database's folder)."""
    if not image_path:
        return None
    candidates = [import_dir / image_path, import_dir / "samples" / Path(image_path).name]
    return next((c for c in candidates if c.is_file()), None)


def export(out_dir: Path, imports: list[Path] | None = None) -> dict:
    """Write corrected samples as <out_dir>/<label>/<prediction id>.<ext> plus a report and manifest."""
    imports = [Path(p) for p in imports] if imports else [
        p.parent for p in visible_glob(feedback_home(), f"*/{SNAPSHOT_DB}")]
    if not imports:
        raise EdgekitError(f"no imported device logs under {feedback_home()}; run `edgekit feedback import DB` "
                           "or `edgekit feedback pull --device NAME` first")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EdgekitError(f"{out_dir}: exists and is not empty; pass a new --out folder")
    written, missing, confusions, per_class = 0, 0, Counter(), Counter()
    for import_dir in imports:
        for row in corrections(import_dir / SNAPSHOT_DB):
            if row["predicted"] is not None and row["predicted"] != row["label"]:
                confusions[(row["predicted"], row["label"])] += 1
            image = sample_file(import_dir, row["image_path"])
            if image is None:
                missing += 1
                continue
            target = out_dir / row["label"] / f"{row['id']}{image.suffix or '.img'}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)
            per_class[row["label"]] += 1
            written += 1
    if not written:
        raise EdgekitError(f"no correction has a saved image ({missing} without); run the device runner with "
                           "--save-all or a higher --save-below so corrected inputs are kept")
    report = {
        "written": written,
        "corrections_without_image": missing,
        "per_class": dict(sorted(per_class.items())),
        "confusions": [{"predicted": p, "correct": c, "count": n} for (p, c), n in confusions.most_common()],
        "sources": [str(p.resolve()) for p in imports],
    }
    write_json_atomic(out_dir / "feedback_report.json", report)
    write_text_atomic(out_dir / "feedback_report.md", report_markdown(report))
    parents = tuple(manifests.ParentRef(path=str(p.resolve()), sha256=sha256_file(p / SNAPSHOT_DB),
                                        kind="feedback-import", file=SNAPSHOT_DB) for p in imports)
    manifests.write(out_dir, manifests.FeedbackDatasetManifest(report=report, parents=parents),
                    ["feedback_report.json", "feedback_report.md"])
    return report


def report_markdown(report: dict) -> str:
    per_class = markdown_table(["class", "corrected samples"], [[k, v] for k, v in report["per_class"].items()])
    confusions = markdown_table(["model said", "person said", "count"],
                                [[c["predicted"], c["correct"], c["count"]] for c in report["confusions"]])
    return (f"# Feedback dataset\n\n{report['written']} corrected samples "
            f"({report['corrections_without_image']} corrections had no saved image).\n\n"
            f"## Corrections per class\n\n{per_class}\n\n## What the model confuses on the device\n\n{confusions}\n")


# Runs on the device with only the standard library: a consistent snapshot of every model's log (the
# backup API includes rows still in the WAL file) and its samples, packed into one tar to fetch.
_PACK_LOGS = """
import glob, json, os, sqlite3, tarfile, tempfile
found = []
with tarfile.open("feedback-pull.tar", "w") as tar:
    for db in sorted(glob.glob("models/*/edgekit_runner.db")):
        folder = os.path.dirname(db)
        tag = os.path.basename(folder)
        fd, snap = tempfile.mkstemp(suffix=".db"); os.close(fd)
        src = sqlite3.connect("file:" + db + "?mode=ro", uri=True, timeout=10)
        dst = sqlite3.connect(snap)
        src.backup(dst); dst.close(); src.close()
        tar.add(snap, arcname=tag + "/edgekit_runner.db"); os.unlink(snap)
        if os.path.isdir(os.path.join(folder, "samples")):
            tar.add(os.path.join(folder, "samples"), arcname=tag + "/samples")
        found.append(tag)
print(json.dumps(found))
"""


def pull(profile, name: str | None = None, accept_new_host_key: bool = False) -> list[Path]:
    """Fetch every runner log (one per deployed model) from a device and import each; returns the imports."""
    import json as _json
    import tarfile

    from edgekit.transport.targets import make_target

    target = make_target(profile, accept_new_host_key=accept_new_host_key)
    target.prepare()
    code, out, err = target.run([profile.interpreter, "-c", _PACK_LOGS], timeout=300, what="pack runner logs")
    if code != 0:
        reason = (err.strip().splitlines() or ["no output"])[-1]
        raise EdgekitError(f"{profile.name}: could not read the runner logs ({reason})")
    tags = _json.loads(out.decode().strip().splitlines()[-1])
    if not tags:
        raise EdgekitError(f"{profile.name}: no runner logs under {target.workdir}/models/*/; deploy a model with "
                           "`edgekit deploy` and run the runner there first")
    base = name or f"{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="edgekit-pull-") as scratch_name:
        scratch = Path(scratch_name)
        archive = target.fetch("feedback-pull.tar", scratch / "pull.tar")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts or member.issym() \
                        or member.islnk():
                    raise EdgekitError(f"{profile.name}: refusing unsafe path {member.name!r} in the pulled logs")
            tar.extractall(scratch / "logs")
        imported = [import_db(scratch / "logs" / tag / "edgekit_runner.db", name=f"{base}-{tag}",
                              samples_dir=scratch / "logs" / tag / "samples") for tag in tags]
    return imported

