"""The way back from the device: import the runner's SQLite log and export corrections as a dataset.

`import` snapshots a device database (with the sqlite3 backup API, so a live WAL database is read
consistently) together with its saved samples; `export` turns every correction that has its input image
into a class-folder dataset that `edgekit train --extra-data` folds into the next run.
"""

from __future__ import annotations

import errno
import json
import logging
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
from edgekit.errors import EdgekitError, TooLarge
from edgekit.render import markdown_table
from edgekit.transport.targets import make_target
from edgekit.untrusted import (
    DEFAULT_PULL_LIMIT,
    check_runner_schema,
    extract_archive,
    regular_file_inside,
    relative_parts,
    safe_id,
    safe_name,
    safe_suffix,
)

log = logging.getLogger(__name__)

SNAPSHOT_DB = "device.db"


def feedback_home() -> Path:
    return edgekit_home() / "feedback"


def _connect_readonly(db_path: Path) -> sqlite3.Connection:
    if not db_path.is_file():
        raise EdgekitError(f"{db_path}: no such runner database")
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        conn.execute("SELECT count(*) FROM predictions").fetchone()
        conn.execute("SELECT count(*) FROM feedback").fetchone()
        return conn
    except sqlite3.DatabaseError as exc:
        raise EdgekitError(f"{db_path}: not a runner database ({exc}); pass the edgekit_runner.db from a device") \
            from None


def import_db(db_path: Path, name: str | None = None, samples_dir: Path | None = None,
              source: str | None = None) -> Path:
    """Snapshot a runner database and the samples its rows name under $EDGEKIT_HOME/feedback/<name>/.

    `source` is what the manifest records as where the log came from (a pull names the device's path,
    not the temporary folder it passed through). Only samples that resolve to regular files inside the
    samples folder are copied; the others are counted as refused.
    """
    db_path = Path(db_path)
    source_conn = _connect_readonly(db_path)
    check_runner_schema(source_conn, db_path)
    check_writable(feedback_home())
    name = name or f"{db_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not safe_name(name):
        raise EdgekitError(f"--name {name!r}: not a usable folder name; use letters, digits, - and _")
    target = feedback_home() / name
    if target.exists():
        raise EdgekitError(f"{target}: an import with this name exists; pass another --name")
    scratch = target.with_name(f".{name}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        copy = sqlite3.connect(scratch / SNAPSHOT_DB)
        source_conn.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file: no -wal/-shm beside it
        copy.close()
        source_conn.close()
        samples_dir = Path(samples_dir) if samples_dir else db_path.parent / "samples"
        copied, refused = _copy_samples(scratch / SNAPSHOT_DB, samples_dir, scratch)
        if refused:
            log.warning("%s: %d sample path(s) refused (outside %s, links to elsewhere, or not regular files)",
                        db_path, refused, samples_dir)
        counts = {**summarize(scratch / SNAPSHOT_DB), "samples": copied, "samples_refused": refused}
        manifests.write(scratch, manifests.FeedbackImportManifest(source=source or str(db_path.resolve()),
                                                                  counts=counts), [SNAPSHOT_DB])
        scratch.rename(target)
    except (sqlite3.OperationalError, OSError) as exc:
        raise _import_error(db_path, scratch.parent, exc) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _import_error(db_path: Path, folder: Path, exc: Exception) -> EdgekitError:
    """A full or read-only $EDGEKIT_HOME/feedback in one line (sqlite says 'database or disk is full')."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        reason = str(exc.args[0][0][-1])  # copytree collects (source, destination, reason) per file
    else:
        reason = getattr(exc, "strerror", None) or str(exc)
    ours = isinstance(exc, OSError) or any(word in reason.lower() for word in ("full", "readonly", "disk i/o"))
    if not ours:  # the device's database itself, e.g. 'database is locked'
        return EdgekitError(f"{db_path}: cannot be snapshotted ({reason}); stop whatever writes it and import again")
    full = getattr(exc, "errno", None) == errno.ENOSPC or "full" in reason.lower() or "space" in reason.lower()
    fix = "free some space there" if full else "make it writable or set EDGEKIT_HOME to a writable folder"
    return EdgekitError(f"{folder}: cannot import the device log into it ({reason}); {fix}; nothing was kept")


def _copy_samples(db_path: Path, samples_dir: Path, dest: Path) -> tuple[int, int]:
    """Copy each sample the log names (`samples/...`, relative to the database) that is a regular file
    inside `samples_dir`; returns (copied, refused). Another database's samples in a shared folder stay."""
    conn = _connect_readonly(db_path)
    paths = [row[0] for row in conn.execute("SELECT DISTINCT image_path FROM predictions "
                                            "WHERE image_path IS NOT NULL")]
    conn.close()
    copied = refused = 0
    linked = samples_dir.is_symlink()  # a samples "folder" that is a link to elsewhere: nothing inside counts
    for image_path in paths:
        parts = relative_parts(image_path)
        if linked or parts is None or len(parts) < 2 or parts[0] != "samples":
            refused += 1
            continue
        if not _present(samples_dir, parts[1:]):
            continue  # evicted on the device: export counts it as a correction without image
        found = regular_file_inside(samples_dir, parts[1:])
        if found is None:
            refused += 1
            continue
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, target)
        copied += 1
    return copied, refused


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
    return [{"id": row["id"], "model_sha256": row["model_sha256"], "label": row["label"],
             "predicted": _top_label(row["top_k"]), "image_path": row["image_path"]} for row in rows]


def _top_label(top_k: object) -> str | None:
    """What the model said, from a row's top_k JSON; None when the device wrote something else."""
    try:
        first = json.loads(top_k)[0] if isinstance(top_k, str) and top_k else None
        return str(first["label"]) if isinstance(first, dict) and "label" in first else None
    except (ValueError, IndexError, KeyError, TypeError):
        return None


def sample_file(import_dir: Path, image_path: str | None) -> Path | None:
    """A logged sample inside the import (device paths are relative to the database's folder), or None:
    a path that is absolute, climbs out with `..` or resolves (through links) outside is never followed."""
    parts = relative_parts(image_path)
    if parts is None:
        return None
    return regular_file_inside(import_dir, parts) or regular_file_inside(import_dir, ("samples", parts[-1]))


def _refusal(row: dict, import_dir: Path, model_labels: dict) -> str | None:
    """Why a correction cannot go into the dataset as it is, or None."""
    if not safe_id(row["id"]):
        return "unsafe_id"
    if not safe_name(row["label"]):
        return "unsafe_label"
    labels = model_labels.get(row["model_sha256"])
    if labels is not None and row["label"] not in labels:
        return "unknown_label"
    if row["image_path"]:
        parts = relative_parts(row["image_path"])
        if parts is None or (_present(import_dir, parts) and regular_file_inside(import_dir, parts) is None):
            return "unsafe_image_path"
    return None


def _present(root: Path, parts: tuple[str, ...]) -> bool:
    candidate = Path(root).joinpath(*parts)
    return candidate.exists() or candidate.is_symlink()


def model_labels(db_path: Path) -> dict:
    """Each logged model's labels (the runner registers them), for checking a correction's label."""
    conn = _connect_readonly(db_path)
    try:
        rows = conn.execute("SELECT sha256, labels FROM models").fetchall()
    except sqlite3.DatabaseError:
        rows = []
    conn.close()
    known = {}
    for sha, labels in rows:
        try:
            parsed = json.loads(labels) if labels else None
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            known[sha] = set(map(str, parsed))
    return known


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
    written, missing, confusions, per_class, refused = 0, 0, Counter(), Counter(), Counter()
    for import_dir in imports:
        known = model_labels(import_dir / SNAPSHOT_DB)
        for row in corrections(import_dir / SNAPSHOT_DB):
            reason = _refusal(row, import_dir, known)
            if reason:
                refused[reason] += 1
                continue
            if row["predicted"] is not None and row["predicted"] != row["label"]:
                confusions[(row["predicted"], row["label"])] += 1
            image = sample_file(import_dir, row["image_path"])
            if image is None:
                missing += 1
                continue
            target = out_dir / row["label"] / f"{row['id']}{safe_suffix(image.suffix)}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)
            per_class[row["label"]] += 1
            written += 1
    if refused:
        log.warning("refused %d correction(s) from the device logs (%s): labels and ids must be plain names "
                    "(and one of the model's labels), sample paths must stay inside the import",
                    sum(refused.values()), ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    if not written:
        raise EdgekitError(f"no correction has a saved image ({missing} without, {sum(refused.values())} refused); "
                           "run the device runner with --save-all or a higher --save-below so corrected inputs "
                           "are kept")
    report = {
        "written": written,
        "corrections_without_image": missing,
        "refused": dict(sorted(refused.items())),
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
    refused = report.get("refused") or {}
    refused_line = (f"{sum(refused.values())} corrections were refused: "
                    f"{', '.join(f'{k} {v}' for k, v in refused.items())}.\n\n") if refused else ""
    return (f"# Feedback dataset\n\n{report['written']} corrected samples "
            f"({report['corrections_without_image']} corrections had no saved image).\n\n{refused_line}"
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


def pull(profile, name: str | None = None, accept_new_host_key: bool = False,
         max_bytes: int = DEFAULT_PULL_LIMIT) -> list[Path]:
    """Fetch every runner log (one per deployed model) from a device and import each; returns the imports.

    The archive is the device's word: it is refused whole (nothing imported) when it holds anything but
    plain files and folders, or exceeds `max_bytes`.
    """
    import json as _json


    target = make_target(profile, accept_new_host_key=accept_new_host_key)
    target.prepare()
    code, out, err = target.run([profile.interpreter, "-c", _PACK_LOGS], timeout=300, what="pack runner logs")
    if code != 0:
        reason = (err.strip().splitlines() or ["no output"])[-1]
        raise EdgekitError(f"{profile.name}: could not read the runner logs ({reason})")
    try:
        tags = _json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        tags = None
    if not isinstance(tags, list) or not all(safe_name(tag) for tag in tags):
        raise EdgekitError(f"{profile.name}: the device did not name its runner logs as plain folder names; "
                           "update edgekit on this machine and redeploy")
    if not tags:
        raise EdgekitError(f"{profile.name}: no runner logs under {target.workdir}/models/*/; deploy a model with "
                           "`edgekit deploy` and run the runner there first")
    base = name or f"{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="edgekit-pull-") as scratch_name:
        scratch = Path(scratch_name)
        try:
            archive = target.fetch("feedback-pull.tar", scratch / "pull.tar", max_bytes=max_bytes)
        except TooLarge as exc:
            raise EdgekitError(f"{exc}; pass a larger --max-size-mb or trim the device's samples") from None
        extract_archive(archive, scratch / "logs", profile.name, max_bytes)
        imported = [import_db(scratch / "logs" / tag / "edgekit_runner.db", name=f"{base}-{tag}",
                              samples_dir=scratch / "logs" / tag / "samples",
                              source=f"{profile.name}:{target.workdir}/models/{tag}/edgekit_runner.db")
                    for tag in tags]
    return imported
