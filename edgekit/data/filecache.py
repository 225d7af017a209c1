"""Per-file results that survive between runs, and the switch and limit every edgekit cache shares.

A scan's verdicts and an image's hashes are kept per file, keyed by path, size and modification time,
under `$EDGEKIT_HOME/cache/<kind>/`: an unchanged folder costs one `stat` per file the next time.
`EDGEKIT_CACHE=off` (`edgekit --no-cache`) turns every cache off; `EDGEKIT_CACHE_LIMIT`
(`--cache-limit`) bounds the pixel cache.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

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


class Progress:
    """Progress of a pass over files on stderr, honest from the first second.

    A line saying what will be done is printed before the work starts; while it runs, the count, the time
    so far and, once there is enough to go on, an estimate of the time left; at the end, a line saying it
    is done. The rate behind the estimate is measured from the first finished file on (the first one also
    pays for loading TensorFlow, which made tqdm's first estimates read `21:50:15`), and only after
    ETA_AFTER_SECONDS and ETA_AFTER_FILES: before that the line says nothing rather than something absurd.
    On a terminal the line is redrawn in place twice a second; in a log, a line every LOG_EVERY seconds.
    """

    ETA_AFTER_SECONDS = 2.0
    ETA_AFTER_FILES = 8
    LOG_EVERY = 5.0

    def __init__(self, total: int, label: str, unit: str = "file(s)", stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, note: str = ""):
        self.total, self.label, self.unit, self.clock = total, label, unit, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.5 if self.tty else self.LOG_EVERY
        self.done, self.first, self.shown_at = 0, None, None
        self.started = clock()
        self._write(f"{label}: {total:,} {unit} to do{note}", final=not self.tty)
        self.shown_at = self.started

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)

    def update(self, n: int = 1) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (now, self.done + n)
        self.done += n
        if now - self.shown_at >= self.every and self.done < self.total:
            self._write(self.line(now), final=not self.tty)
            self.shown_at = now

    def eta(self, now: float) -> float | None:
        """Seconds left, or None while the sample is too small to say."""
        if self.first is None:
            return None
        since, at_first = now - self.first[0], self.first[1]
        if since < self.ETA_AFTER_SECONDS or self.done - at_first < self.ETA_AFTER_FILES:
            return None
        return (self.total - self.done) * since / (self.done - at_first)

    def line(self, now: float) -> str:
        eta = self.eta(now)
        left = f", about {_duration(eta)} left" if eta is not None else ""
        return f"{self.label}: {self.done:,} of {self.total:,} {self.unit}, {_duration(now - self.started)}{left}"

    def close(self, failed: bool = False) -> None:
        took = _duration(self.clock() - self.started)
        text = (f"{self.label}: stopped after {self.done:,} of {self.total:,} {self.unit} ({took})" if failed else
                f"{self.label}: done, {self.done:,} {self.unit} in {took}")
        self._write(text, final=True)

    def _write(self, text: str, final: bool) -> None:
        try:
            if self.tty:
                self.stream.write(f"\r\x1b[K{text}" + ("\n" if final else ""))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr never stops the work
            pass


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def progress(total: int, label: str, note: str = "", unit: str = "file(s)"):
    """Progress on stderr (see Progress) when the run shows INFO messages or stderr is a terminal; `--quiet`
    and library use with logging left at its default print nothing."""
    if not (logging.getLogger("edgekit").isEnabledFor(logging.INFO) or sys.stderr.isatty()):
        return _Silent()
    return Progress(total, label, unit, note=note)


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


def bounded_map(pool: ThreadPoolExecutor, function: Callable, items: Iterable, window: int):
    """`pool.map` in order, with at most `window` calls submitted and not yet consumed.

    `Executor.map` submits every item up front, and each pending future costs ~1.6 KB: 32 MB of a first
    scan's peak at 20,000 files, growing with the folder. On an error the calls not yet started are cancelled.
    """
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


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
        unchanged = len(paths) - len(todo)
        note = f" ({unchanged:,} unchanged since the last run)" if unchanged else ""
        with progress(len(todo), what, note) as bar, ThreadPoolExecutor(max_workers=workers) as pool:
            for index, result in zip(todo, bounded_map(pool, lambda i: list(work(paths[i])), todo, 4 * workers)):
                results[index] = result
                bar.update()
    fresh = {p: [stats[p].st_size, stats[p].st_mtime_ns, *r] for p, r in zip(paths, results) if p in stats}
    if todo or fresh.keys() != cache.entries.keys():
        cache.save(fresh)
    return results
