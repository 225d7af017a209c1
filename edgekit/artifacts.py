"""Run directories, manifests, sha256 and atomic writes: how every stage hands work to the next.

Each stage reads one artifact directory and writes a new one whose `manifest.json` names its parent,
so a prediction on a device can be walked back to the data and recipe that made its model.
A file is never visible half-written: it is written to a temporary name beside its target and renamed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from edgekit.errors import EdgekitError

MANIFEST = "manifest.json"


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
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.tmp-", suffix=target.suffix, dir=target.parent)
    except OSError as exc:
        raise _write_error(target, exc) from None
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
    except OSError as exc:
        raise _write_error(target, exc) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _write_error(target: Path, exc: OSError) -> EdgekitError:
    """Read-only folders and full disks are the user's to fix: one line, not a traceback."""
    hint = "free some space" if exc.errno == errno.ENOSPC else "choose a writable location or set EDGEKIT_HOME"
    return EdgekitError(f"{target}: cannot write ({exc.strerror or exc}); {hint}")


def check_writable(directory: Path) -> Path:
    """Fail before the work, not after it: the folder (or its nearest existing parent) must be writable."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise EdgekitError(f"{probe}: is a file, not a folder; choose another output location")
    try:
        probe_file = tempfile.NamedTemporaryFile(dir=probe, prefix=".edgekit-write-check-")
        probe_file.close()
    except OSError as exc:
        raise EdgekitError(f"{probe}: cannot write here ({exc.strerror}); choose a writable location or "
                           "set EDGEKIT_HOME") from None
    return directory


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


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def visible_glob(root: Path, pattern: str) -> list[Path]:
    """`root.glob(pattern)` without anything under a dot-folder: scratch (`.x.tmp-*`) and swapped-out
    (`.x.old-*`) folders hold manifests too, but they are not runs, variants or imports."""
    root = Path(root)
    return sorted(p for p in root.glob(pattern) if not any(part.startswith(".") for part in p.relative_to(root).parts))


def _old_name(final_dir: Path) -> Path:
    return final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}-{int(time.time() * 1000)}")


def replace_dir(scratch: Path, final_dir: Path) -> None:
    """Swap a finished scratch folder into place (two renames); the old folder is removed only after.

    A kill between the renames leaves `.NAME.old-PID-MS` and no NAME: `recover_swaps` (run by the next
    command that reads or writes that folder) puts the old folder back.
    """
    old = None
    if final_dir.exists():
        old = _old_name(final_dir)
        final_dir.rename(old)
    scratch.rename(final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_swaps(parent: Path) -> list[Path]:
    """Finish or undo the swaps under `parent` whose process is gone: a `.NAME.old-*` folder is restored as
    NAME when NAME is missing (killed between the renames), else deleted (killed before the cleanup)."""
    recovered = []
    parent = Path(parent)
    if not parent.is_dir():
        return recovered
    for old in sorted(parent.glob(".*.old-*")):
        name, _, tag = old.name[1:].rpartition(".old-")
        pid = tag.split("-")[0] if "-" in tag else ""  # older swaps named no process: treat as finished
        if not name or not old.is_dir() or (pid.isdigit() and process_alive(int(pid))):
            continue
        final_dir = parent / name
        try:
            if final_dir.exists():
                shutil.rmtree(old)
            else:
                old.rename(final_dir)
        except OSError:
            continue  # a read-only folder: listing skips dot-folders anyway
        recovered.append(final_dir)
    return recovered


def latest_run(runs_dir: Path | None = None) -> Path:
    """The most recently created run under the runs directory: the default input of later stages."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    candidates = [p.parent for p in visible_glob(runs_dir, f"*/{MANIFEST}")]
    if not candidates:
        raise EdgekitError(f"no runs under {runs_dir}: run `edgekit train` first or pass a run directory")
    return max(candidates, key=lambda p: (p / MANIFEST).stat().st_mtime)
