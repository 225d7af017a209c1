"""Run directories, manifests, sha256 and atomic writes: how every stage hands work to the next.

Each stage reads one artifact directory and writes a new one whose `manifest.json` names its parent,
so a prediction on a device can be walked back to the data and recipe that made its model.
A file is never visible half-written: it is written to a temporary name beside its target and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from edgekit.errors import EdgekitError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def edgekit_home() -> Path:
    """Where default state lives: `$EDGEKIT_HOME`, else the current directory."""
    return Path(os.environ.get("EDGEKIT_HOME") or ".").expanduser()


def default_runs_dir() -> Path:
    return edgekit_home() / "runs"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    path = Path(path)
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target` (same suffix); rename it over `target` on success.

    Writers that insist on choosing their own file handling (Keras, the TFLite converter, matplotlib)
    write to the yielded path; a failure or a kill leaves at most a stray `.tmp-*` file, never a
    truncated `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    os.unlink(tmp)  # some writers refuse to overwrite; let them create it
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_dir():
            raise EdgekitError(f"{target}: writer produced a directory, expected a file")
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: Path, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: Path, payload: dict) -> None:
    write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict:
    """Versions that change results: recorded in every manifest."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for dist in ("edgekit", "tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert",
                 "numpy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return versions


def write_manifest(directory: Path, manifest: dict, files: list[str]) -> dict:
    """Record sha256 and size of `files` (relative to `directory`) and write manifest.json atomically."""
    directory = Path(directory)
    manifest = dict(manifest)
    manifest.setdefault("schema", SCHEMA_VERSION)
    manifest.setdefault("created", utc_now())
    manifest["files"] = {name: file_record(directory / name) for name in files}
    manifest.setdefault("versions", library_versions())
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: Path) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise EdgekitError(f"{directory}: no {MANIFEST}; is this an edgekit run or variant directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); the file is damaged") \
            from None


def verify_files(directory: Path, manifest: dict | None = None, names: list[str] | None = None) -> dict:
    """Check that files listed in the manifest still have their recorded sha256 and size."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else read_manifest(directory)
    records = manifest.get("files", {})
    for name in names if names is not None else list(records):
        if name not in records:
            raise EdgekitError(f"{directory / MANIFEST}: lists no file {name!r}")
        path = directory / name
        if not path.is_file():
            raise EdgekitError(f"{path}: missing, but listed in {MANIFEST}; the artifact is incomplete")
        actual = sha256_file(path)
        if actual != records[name]["sha256"]:
            raise EdgekitError(
                f"{path}: sha256 {actual[:12]}… does not match {records[name]['sha256'][:12]}… in "
                f"{MANIFEST}; the file was changed after it was written — re-create it"
            )
    return manifest


def parent_record(directory: Path, manifest: dict, main_file: str) -> dict:
    """How a child artifact names its parent: the directory, its kind and its main file's sha256."""
    return {
        "path": str(Path(directory).resolve()),
        "kind": manifest.get("kind"),
        "file": main_file,
        "sha256": manifest["files"][main_file]["sha256"],
    }


def latest_run(runs_dir: Path | None = None) -> Path:
    """The most recently created run under the runs directory: the default input of later stages."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    candidates = [p.parent for p in runs_dir.glob(f"*/{MANIFEST}")]
    if not candidates:
        raise EdgekitError(f"no runs under {runs_dir}: run `edgekit train` first or pass a run directory")
    return max(candidates, key=lambda p: (p / MANIFEST).stat().st_mtime)
