"""Per-file results that survive between runs, and the switch and limit every edgekit cache shares.

A scan's verdicts and an image's hashes are kept per file, keyed by path, size and modification time,
under `$EDGEKIT_HOME/cache/<kind>/`: an unchanged folder costs one `stat` per file the next time.
`EDGEKIT_CACHE=off` (`edgekit --no-cache`) turns every cache off; `EDGEKIT_CACHE_LIMIT`
(`--cache-limit`) bounds the pixel cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edgekit import __version__
from edgekit.artifacts import edgekit_home, write_text_atomic
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 20 << 30
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool
    limit_bytes: int


def parse_size(text: str, where: str) -> int:
    """'20G', '500M', '1.5G' or a plain byte count."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in UNITS and not value[-1:].isdigit() else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise EdgekitError(f"{where}={text!r}: not a size; use bytes or a number with K, M, G or T (e.g. 20G)") \
            from None
    if not number >= 0 or number == float("inf"):  # nan and inf included
        raise EdgekitError(f"{where}={text!r}: a size must be a finite number of bytes, 0 or more")
    return int(number * UNITS[unit])


def cache_settings() -> CacheSettings:
    """Read from the environment, so every command and library call shares one switch."""
    enabled = os.environ.get("EDGEKIT_CACHE", "on").strip().lower() not in ("off", "0", "no", "false")
    limit = os.environ.get("EDGEKIT_CACHE_LIMIT")
    return CacheSettings(enabled, parse_size(limit, "EDGEKIT_CACHE_LIMIT") if limit else DEFAULT_LIMIT)


def cache_enabled(use_cache: bool | None) -> bool:
    """An explicit choice, else the environment's switch."""
    return cache_settings().enabled if use_cache is None else use_cache


def cache_dir() -> Path:
    return edgekit_home() / "cache"


def progress(total: int, description: str):
    """A progress bar on stderr (only on a terminal: logs and CI get the start and end lines instead)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=None, mininterval=1.0,
                leave=False)


def source_digest(sources: Iterable[Path]) -> str:
    """A hash of source files' bytes: part of a cache key, so that editing the code that computed a cached
    value retires it (a version number someone must remember to bump does not)."""
    digest = hashlib.sha256()
    for path in sources:
        digest.update(f"{Path(path).name}\n".encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


class FileResults:
    """Results of an earlier pass over files (a scan's verdicts, image hashes), one JSON file per
    (kind, identity, code) under `$EDGEKIT_HOME/cache/<kind>/`, reused while a file's size and mtime hold.

    `sources` are the files whose code computes the results: editing them starts a new cache file."""

    def __init__(self, kind: str, identity: str, version: int, enabled: bool = True,
                 valid: Callable[[list], bool] | None = None, sources: Iterable[Path] = ()):
        key = f"{version}\t{identity}\t{__version__}\t{source_digest(sources)}"
        self.path = cache_dir() / kind / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        self.kind, self.version, self.enabled, self.valid = kind, version, enabled, valid
        self.entries: dict[str, list] = {}
        if enabled and self.path.is_file():
            try:
                payload = json.loads(self.path.read_text())
                if payload.get("format") != version or not isinstance(payload.get("files"), dict):
                    raise ValueError("another format")
                self.entries = payload["files"]
            except (OSError, ValueError) as exc:
                log.warning("%s cache %s is unreadable (%s); computing it again", kind, self.path, str(exc)[:80])

    def lookup(self, path: str, stat: os.stat_result) -> list | None:
        """The stored result for an unchanged file, else None (also for an entry that is not valid: a cache
        file is never trusted further than its checks)."""
        entry = self.entries.get(path)
        if isinstance(entry, list) and len(entry) > 2 and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2:] if self.valid is None or self.valid(entry[2:]) else None
        return None

    def save(self, results: dict[str, list]) -> None:
        """Replace the stored results with `results` (path -> [size, mtime_ns, *result])."""
        if not self.enabled:
            return
        try:
            write_text_atomic(self.path, json.dumps({"format": self.version, "files": results}))
        except (OSError, EdgekitError) as exc:  # a full disk or read-only home: go on without the cache
            log.warning("could not save the %s cache (%s); the next run reads every file again", self.kind,
                        getattr(exc, "strerror", None) or exc)


def per_file(paths: list[str], work: Callable[[str], list], cache: FileResults, what: str,
             workers: int = 8) -> list[list | None]:
    """`work(path)` for every file not already done unchanged, in threads; results in the order of
    `paths`, None for a file that cannot be stat()ed. The cache is rewritten when anything changed."""
    results: list[list | None] = []
    stats: dict[str, os.stat_result] = {}
    todo = []
    for index, path in enumerate(paths):
        try:
            stats[path] = os.stat(path)
        except OSError:
            results.append(None)
            continue
        found = cache.lookup(path, stats[path])
        results.append(found)
        if found is None:
            todo.append(index)
    if todo:
        log.info("%s: %d of %d file(s) (%d unchanged since the last time)", what, len(todo), len(paths),
                 len(paths) - len(todo))
        with progress(len(todo), what) as bar, ThreadPoolExecutor(max_workers=workers) as pool:
            for index, result in zip(todo, pool.map(lambda i: list(work(paths[i])), todo)):
                results[index] = result
                bar.update()
    fresh = {p: [stats[p].st_size, stats[p].st_mtime_ns, *r] for p, r in zip(paths, results) if p in stats}
    if todo or fresh.keys() != cache.entries.keys():
        cache.save(fresh)
    return results
