"""Read a device's new log rows and samples through its runner (`rows`, `samples`), validated at the border.

Only rows after the store's cursor cross the wire, and only samples whose sha256 the store lacks, so what
a pull moves grows with the new rows, not with the device's database. Everything a device sends is a
stranger's: ids, times, labels, paths and sizes are checked here, and a row that fails is dropped and
counted (`rejected`) rather than stopping the pull forever at the same bad row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import tarfile
from dataclasses import dataclass, field
from datetime import datetime

from edgekit.devices import RUNNER_NAME, runner_module
from edgekit.errors import EdgekitError
from edgekit.fleet.drift import parse_reference
from edgekit.fleet.store import SAMPLE_EXTENSIONS, Batch
from edgekit.transport.targets import RUNNER_ERROR_PREFIX

ROWS_LIMIT = 5000  # rows per table per round trip
SAMPLES_PER_CALL = 400  # sample paths per `samples` call (stays far below any argv limit)
MAX_SAMPLE_BYTES = 64 * 2**20  # a device cannot make the host hold more than this for one sample
MAX_TEXT = 200
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAMPLE_PATH = re.compile(r"^samples/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_LOG_PATH = re.compile(r"^[A-Za-z0-9_./-]{1,255}$")


@dataclass
class DeviceRead:
    batch: Batch
    bytes_moved: int = 0
    round_trips: int = 0
    rejected: int = 0
    samples_missing: int = 0
    notes: list[str] = field(default_factory=list)


def safe_label(value, what: str) -> str:
    """A label fit to become a folder name: text, no path separators, not '.'/'..', no control characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT or value in (".", "..") \
            or any(c in value for c in "/\\\0") or any(ord(c) < 32 for c in value):
        raise ValueError(f"{what} {str(value)[:40]!r} is not a usable label")
    return value


def _time(value) -> str:
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("time is not text")
    datetime.fromisoformat(value)
    return value


def _int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a row id")
    return value


def _prediction(row: dict) -> dict:
    top_k = json.loads(row["top_k"])
    latency = json.loads(row["latency"])
    if not isinstance(top_k, list) or not top_k or not all(isinstance(t, dict) for t in top_k[:20]):
        raise ValueError("top_k is not a list of results")
    score = top_k[0].get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError("top score is not a number")
    total = sum(v for v in latency.values() if isinstance(v, (int, float)) and math.isfinite(v)) \
        if isinstance(latency, dict) else None
    image_path = row.get("image_path")
    if image_path is not None and not (isinstance(image_path, str) and _SAMPLE_PATH.match(image_path)):
        raise ValueError(f"sample path {str(image_path)[:60]!r} is not under samples/")
    digest = row.get("sample_sha256")
    if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
        raise ValueError("sample sha256 is malformed")
    if not isinstance(row["id"], str) or not _ID.match(row["id"]):
        raise ValueError("prediction id is malformed")
    if not isinstance(row["model_sha256"], str) or not _SHA256.match(row["model_sha256"]):
        raise ValueError("model sha256 is malformed")
    ext = image_path.rsplit(".", 1)[-1].lower() if image_path and "." in image_path else "img"
    return {"id": row["id"], "time": _time(row["time"]), "model_sha256": row["model_sha256"],
            "source": str(row.get("source", ""))[:MAX_TEXT], "top_label": safe_label(top_k[0].get("label"), "label"),
            "top_score": float(score), "top_k": json.dumps(top_k[:20]), "latency_ms": total,
            "image_path": image_path, "sample_sha256": digest if image_path else None,
            "sample_ext": ext if ext in SAMPLE_EXTENSIONS else "img"}


def _feedback(row: dict) -> dict:
    if not isinstance(row["prediction_id"], str) or not _ID.match(row["prediction_id"]):
        raise ValueError("prediction id is malformed")
    return {"id": _int(row["id"]), "prediction_id": row["prediction_id"], "label": safe_label(row["label"], "label"),
            "time": _time(row["time"]), "source": str(row.get("source", ""))[:MAX_TEXT]}


def _shadow(row: dict) -> dict:
    text = json.dumps(row)
    if len(text) > 65536:
        raise ValueError("shadow row is too large")
    prediction_id = row.get("prediction_id")
    return {"id": _int(row["_rowid"]), "prediction_id": prediction_id if isinstance(prediction_id, str) else None,
            "row": text}


def _model(record: dict) -> dict:
    if not isinstance(record.get("sha256"), str) or not _SHA256.match(record["sha256"]):
        raise ValueError("model sha256 is malformed")
    labels = record.get("labels")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("labels are not a list of text")
    variant = record.get("variant")
    reference = record.get("drift_reference")
    if reference is not None:
        try:
            reference = dataclasses.asdict(parse_reference(reference))
        except (EdgekitError, TypeError, ValueError, KeyError):
            reference = None  # status shows "no reference" rather than trusting a malformed one
    return {"sha256": record["sha256"], "labels": labels,
            "variant": variant[:MAX_TEXT] if isinstance(variant, str) else None, "drift_reference": reference}


_PARSERS = {"predictions": _prediction, "feedback": _feedback, "shadow": _shadow}


def _run(target, argv: list[str], what: str, read: DeviceRead) -> bytes:
    code, out, err = target.run([target.profile.interpreter, RUNNER_NAME, *argv], timeout=300, what=what)
    read.bytes_moved += len(out) + len(err.encode())
    read.round_trips += 1
    if code == 0:
        return out
    lines = [line for line in err.splitlines() if line.strip()]
    own = next((line[len(RUNNER_ERROR_PREFIX):] for line in reversed(lines) if line.startswith(RUNNER_ERROR_PREFIX)),
               None)
    if any("invalid choice" in line for line in lines):
        own = (f"the {RUNNER_NAME} on the device predates `{argv[0]}`; update it with `edgekit fleet deploy` "
               "or `edgekit deploy`")
    elif code == 127 or any("can't open file" in line for line in lines):
        own = f"no {RUNNER_NAME} in {target.workdir}; deploy a model there first"
    raise EdgekitError(f"{target.name}: `{RUNNER_NAME} {argv[0]}` failed ({own or (lines or ['no output'])[-1]})")


def read_new_rows(target, cursors: dict[str, dict], known_models: set[str], limit: int = ROWS_LIMIT) -> DeviceRead:
    """Every row after `cursors` in every runner log on the device, in as many round trips as `limit` needs."""
    schema = runner_module().SCHEMA_VERSION
    read = DeviceRead(Batch(device=target.name))
    logs: dict[str, dict] = {}
    known_models = set(known_models)
    while True:
        current = {**cursors, **{path: {**log["cursor"], "db_id": log["db_id"]} for path, log in logs.items()}}
        request = json.dumps({"cursors": current, "known_models": sorted(known_models)})
        out = _run(target, ["rows", "--cursors", request, "--limit", str(limit)], "rows", read)
        try:
            reply = json.loads(out.decode("utf-8").strip().splitlines()[-1])
            replies = list(reply["logs"])
            read.batch.runner_version = str(reply.get("runner_version", ""))[:20]
        except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
            raise EdgekitError(f"{target.name}: `{RUNNER_NAME} rows` printed no JSON report") from None
        more, before = False, {path: dict(log["cursor"]) for path, log in logs.items()}
        for entry in replies:
            more |= _take_log(target.name, entry, current, logs, read, schema, known_models)
        moved = any(log["cursor"] != before.get(path) for path, log in logs.items())
        if not more or not moved:  # a device that says "more" without moving a cursor cannot loop us forever
            break
    read.batch.logs = list(logs.values())
    return read


def _take_log(device: str, entry: dict, cursors: dict, logs: dict, read: DeviceRead, schema: int,
              known_models: set[str]) -> bool:
    """Fold one log's reply into `logs`; returns whether the device has more rows for it."""
    path = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(path, str) or not _LOG_PATH.match(path) or ".." in path.split("/"):
        raise EdgekitError(f"{device}: the runner named a log {str(path)[:60]!r} outside its models/ folder")
    if "error" in entry:
        read.notes.append(f"{path}: {str(entry['error'])[:200]}")
        return False
    version = entry.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > schema:
        raise EdgekitError(f"{device}: {path} has schema_version {version}, newer than this edgekit reads "
                           f"({schema}); upgrade edgekit on this machine")
    if version < 1:
        raise EdgekitError(f"{device}: {path} has schema_version {version}, not a runner log")
    db_id = str(entry.get("db_id", ""))[:100]
    cursor = cursors.get(path, {})
    if path not in logs or entry.get("restarted") or cursor.get("db_id") != db_id:
        start = {} if entry.get("restarted") or cursor.get("db_id") != db_id else cursor
        logs[path] = {"path": path, "db_id": db_id, "predictions": [], "feedback": [], "shadow": [],
                      "cursor": {table: int(start.get(table, 0)) for table in ("predictions", "feedback", "shadow")}}
    log = logs[path]
    for table in ("predictions", "feedback", "shadow"):
        for row in entry.get(table) or []:
            try:
                key = "id" if table == "feedback" else "_rowid"
                log["cursor"][table] = max(log["cursor"][table], _int(row[key]))
                log[table].append(_PARSERS[table](row))
            except (ValueError, KeyError, TypeError) as exc:
                read.rejected += 1
                if len(read.notes) < 5:
                    read.notes.append(f"{path}: {table} row rejected ({str(exc)[:100]})")
    for record in entry.get("models") or []:
        try:
            model = _model(record)
        except ValueError:
            read.rejected += 1
            continue
        if model["sha256"] not in known_models:
            known_models.add(model["sha256"])
            read.batch.models.append(model)
    disk = entry.get("disk") if isinstance(entry.get("disk"), dict) else {}
    read.batch.disk[path] = {k: int(v) for k, v in disk.items() if isinstance(v, int) and not isinstance(v, bool)}
    return bool(entry.get("more"))


def fetch_samples(target, read: DeviceRead, wanted: set[str], put) -> None:
    """Fetch the samples whose sha256 is in `wanted` (one copy each), check every byte against its sha256,
    and hand each to `put(sha256, ext, bytes) -> new?` (the store) as it arrives."""
    for log in read.batch.logs:
        paths, expected = [], {}
        for row in log["predictions"]:
            digest = row["sample_sha256"]
            if digest in wanted and digest not in read.batch.samples and row["image_path"] not in expected:
                paths.append(row["image_path"])
                expected[row["image_path"]] = (digest, row["sample_ext"])
        for start in range(0, len(paths), SAMPLES_PER_CALL):
            chunk = paths[start:start + SAMPLES_PER_CALL]
            out = _run(target, ["samples", log["path"], *chunk], "samples", read)
            _take_samples(target.name, out, expected, read, put)
    got = set(read.batch.samples)
    for log in read.batch.logs:  # a row never points at a sample the store will not hold
        for row in log["predictions"]:
            if row["sample_sha256"] in wanted and row["sample_sha256"] not in got:
                row["sample_sha256"] = None
                read.samples_missing += 1


def _take_samples(device: str, out: bytes, expected: dict, read: DeviceRead, put) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as tar:
            for member in tar:
                if not member.isreg() or member.name not in expected or member.size > MAX_SAMPLE_BYTES:
                    continue
                data = tar.extractfile(member).read()
                digest, ext = expected[member.name]
                if hashlib.sha256(data).hexdigest() == digest:  # else it changed since `rows`: missing
                    read.batch.new_samples += bool(put(digest, ext, data))
                    read.batch.samples[digest] = ext
    except tarfile.TarError as exc:
        raise EdgekitError(f"{device}: `{RUNNER_NAME} samples` sent a damaged archive ({exc})") from None
