"""Checks for data that arrives from a device or a stranger: names, paths, archives.

A label typed on a device, a prediction id, a sample path in a runner database and the members of a
pulled tar are all data: none of them may name a path outside the folder they belong to, make edgekit
open a device or a pipe, or grow without bound. Every refusal is counted so the caller can report it.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from collections import Counter
from pathlib import Path, PurePosixPath

from edgekit.errors import EdgekitError

# The runner's SCHEMA_VERSION (devices/edgekit_runner.py): a database from a newer runner may mean
# something this edgekit cannot read correctly.
RUNNER_SCHEMA_VERSION = 2  # 2 added the shadow table (fleet rollout); 1 is read as it is
DEFAULT_PULL_LIMIT = 2 * 2**30  # bytes per `feedback pull`; --max-size-mb changes it
MAX_NAME = 100
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


def safe_name(text: object) -> bool:
    """One printable path component that is not hidden and not `.`/`..`: usable as a folder or file name."""
    return (isinstance(text, str) and 0 < len(text) <= MAX_NAME and text == text.strip() and text.isprintable()
            and not text.startswith(".") and not any(c in text for c in "/\\:\0"))


def safe_id(text: object) -> bool:
    """A prediction id as the runner makes them (hex uuids), or anything as tame."""
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def safe_suffix(suffix: str) -> str:
    return suffix.lower() if _SUFFIX.fullmatch(suffix) else ".img"


def relative_parts(path: object) -> tuple[str, ...] | None:
    """The components of a relative device path, or None when it is absolute, climbs out or is odd."""
    if not isinstance(path, str) or not path or "\0" in path or "\\" in path:
        return None
    pure = PurePosixPath(path)
    if pure.is_absolute() or not pure.parts or ".." in pure.parts:
        return None
    return pure.parts


def regular_file_inside(root: Path, relative: tuple[str, ...]) -> Path | None:
    """`root/relative` when it resolves (symlinks followed) strictly inside `root` to a regular file."""
    root = Path(root).resolve()
    candidate = root.joinpath(*relative)
    try:
        resolved = candidate.resolve(strict=True)
        resolved.relative_to(root)
        if not stat.S_ISREG(os.stat(resolved).st_mode):
            return None
    except (OSError, ValueError, RuntimeError):
        return None
    return resolved


def check_runner_schema(conn, where: Path) -> None:
    """A database written by a newer runner is refused rather than misread."""
    import sqlite3

    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError:
        row = None  # the oldest runners had no meta table
    try:
        version = int(row[0]) if row else RUNNER_SCHEMA_VERSION
    except (TypeError, ValueError):
        raise EdgekitError(f"{where}: schema_version {row[0]!r} is not a number; not a runner database") from None
    if version > RUNNER_SCHEMA_VERSION:
        raise EdgekitError(f"{where}: schema_version {version} is newer than this edgekit reads "
                           f"({RUNNER_SCHEMA_VERSION}); upgrade edgekit on this machine")


def _member_kind(member: tarfile.TarInfo) -> str:
    for test, kind in ((member.issym, "symlink"), (member.islnk, "hard link"), (member.isfifo, "fifo"),
                       (member.ischr, "character device"), (member.isblk, "block device")):
        if test():
            return kind
    return "special entry"


def check_archive(archive: Path, where: str, max_bytes: int) -> list[tarfile.TarInfo]:
    """The members of a pulled tar, after refusing it whole if anything in it is not a plain file or
    folder inside it, or if it would unpack to more than `max_bytes`: nothing is extracted then."""
    size = Path(archive).stat().st_size
    if size > max_bytes:
        raise EdgekitError(f"{where}: the pulled archive is {size / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} "
                           "MB limit; pass a larger --max-size-mb or trim the device's samples")
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        raise EdgekitError(f"{where}: the pulled archive is not a readable tar ({exc})") from None
    refused: Counter = Counter()
    first = None
    total = 0
    for member in members:
        kind = None
        if relative_parts(member.name) is None:
            kind = "path outside the archive"
        elif not (member.isfile() or member.isdir()):
            kind = _member_kind(member)
        if kind:
            refused[kind] += 1
            first = first or f"{member.name!r}, a {kind}"
        total += member.size if member.isfile() else 0
    if refused:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(refused.items()))
        raise EdgekitError(f"{where}: refusing the pulled logs: {sum(refused.values())} entries are not plain "
                           f"files or folders ({counts}; first {first}); nothing was imported")
    if total > max_bytes:
        raise EdgekitError(f"{where}: the pulled logs unpack to {total / 2**20:.0f} MB, over the "
                           f"{max_bytes / 2**20:.0f} MB limit; pass a larger --max-size-mb or trim the device's "
                           "samples")
    return members


def extract_archive(archive: Path, dest: Path, where: str, max_bytes: int) -> None:
    """Unpack a pulled tar after `check_archive`, with tarfile's `data` filter as a second guard."""
    check_archive(archive, where, max_bytes)
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise EdgekitError(f"{where}: cannot unpack the pulled logs ({exc})") from None
