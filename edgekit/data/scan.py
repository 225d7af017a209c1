"""Listing and checking the files of an image folder, with every skipped file accounted for.

A scan decodes every image once to reject what training could not read, which is the slow part
of a fresh dataset (an hour for 50,000 phone photos), so results are cached per file by path, size
and modification time under `$EDGEKIT_HOME/cache/scan/`: an unchanged folder is checked with one
`stat` per file. Files that are not used are named with their reason, in the warning or in a list
file the warning points to, so nothing vanishes silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgekit.artifacts import edgekit_home, write_text_atomic
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

# bump when the check itself changes (another decoder, another rule): old verdicts are then not reused
SCAN_FORMAT = 2
LISTED_IN_WARNING = 5

Check = Callable[[str], "tuple[bool, str | None]"]


def cache_dir() -> Path:
    return edgekit_home() / "cache"


def progress(total: int, description: str):
    """A progress bar on stderr (only on a terminal: logs and CI get the start and end lines instead)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=None, mininterval=1.0,
                leave=False)


def list_class_folder(folder: Path, extensions: tuple[str, ...]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image candidates under one class folder, and every other entry with why it is not used.

    Symlinked files are followed; symlinked folders are not (a loop would never end) and are listed.
    """
    candidates: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            path = here / name
            if name.startswith("."):
                skipped.append((str(path), "hidden folder, not scanned"))
            elif path.is_symlink():
                skipped.append((str(path), "symlink to a folder, not followed; copy the images in instead"))
            elif name.lower().endswith(extensions):
                skipped.append((str(path), "is a folder named like an image; the images inside it are used"))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink())
        for name in sorted(filenames):
            path = here / name
            reason = _not_a_candidate(path, name, extensions)
            if reason is None:
                candidates.append(path)
            else:
                skipped.append((str(path), reason))
    return sorted(candidates), skipped


def _not_a_candidate(path: Path, name: str, extensions: tuple[str, ...]) -> str | None:
    if name.startswith("."):
        return "hidden file"
    suffix = path.suffix.lower()
    if not suffix:
        return f"no file extension; rename it with one of {', '.join(extensions)} if it is an image"
    if suffix not in extensions:
        return f"{suffix} is not an image type edgekit reads ({', '.join(extensions)})"
    if path.is_symlink() and not path.exists():
        return "broken or looping symlink"
    if not path.is_file():
        return "not a regular file"
    return None


def stray_entries(root: Path, class_folders: list[Path]) -> list[tuple[str, str]]:
    """Entries beside the class folders: not in any class, so not used."""
    keep = {p.name for p in class_folders}
    out = []
    for path in sorted(root.iterdir()):
        if path.name in keep:
            continue
        if path.is_dir():
            reason = "hidden folder, not scanned" if path.name.startswith(".") else \
                "symlink to a folder, not followed" if path.is_symlink() else "not a class folder"
        else:
            reason = "not inside a class folder"
        out.append((str(path), reason))
    return out


class FileResults:
    """Results of an earlier pass over files (a scan's verdicts, image hashes), one JSON file per
    (kind, identity) under `$EDGEKIT_HOME/cache/<kind>/`, reused while a file's size and mtime hold."""

    def __init__(self, kind: str, identity: str, version: int, enabled: bool = True,
                 valid: Callable[[list], bool] | None = None):
        key = f"{version}\t{identity}\t{_edgekit_version()}"
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


def scan_cache(root: Path, max_pixels: int, enabled: bool = True) -> FileResults:
    """The scan's verdicts for one folder: (tf decodable, reason it is not usable or None) per file."""
    return FileResults("scan", f"{Path(root).resolve()}\t{max_pixels}", SCAN_FORMAT, enabled,
                       valid=lambda v: len(v) == 2 and isinstance(v[0], bool) and isinstance(v[1], (str, type(None))))


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


def check_files(paths: list[str], check: Check, cache: FileResults, label: str) -> list[tuple[bool, str | None]]:
    """`check` every file not already checked unchanged; verdicts in the order of `paths`."""
    verdicts = per_file(paths, check, cache, f"checking {label}")
    out = []
    for path, verdict in zip(paths, verdicts):
        if verdict is None:
            try:
                os.stat(path)
                reason = "cannot be read"
            except OSError as exc:
                reason = f"cannot be read ({exc.strerror or exc})"
            out.append((False, reason))
        else:
            out.append((bool(verdict[0]), verdict[1]))
    return out


def report_skipped(skipped: list[tuple[str, str]], root: Path) -> Path | None:
    """Warn once, naming the first few skipped files; all of them with reasons go to a list file."""
    if not skipped:
        return None
    listed = "; ".join(f"{p} ({r})" for p, r in skipped[:LISTED_IN_WARNING])
    listing = None
    if len(skipped) > LISTED_IN_WARNING:
        digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
        listing = edgekit_home() / "logs" / f"skipped-{Path(root).name}-{digest}.tsv"
        try:
            write_text_atomic(listing, "path\treason\n" + "".join(f"{p}\t{r}\n" for p, r in skipped))
            tail = f" and {len(skipped) - LISTED_IN_WARNING} more, all listed with reasons in {listing}"
        except OSError as exc:
            listing = None
            tail = (f" and {len(skipped) - LISTED_IN_WARNING} more (could not write their list: "
                    f"{exc.strerror or exc}): {'; '.join(f'{p} ({r})' for p, r in skipped[LISTED_IN_WARNING:])}")
    else:
        tail = ""
    log.warning("skipped %d file(s) in %s that are not usable images: %s%s (use --strict to stop at an "
                "unreadable image instead)", len(skipped), root, listed, tail)
    return listing


def scan_folder(root: Path, spec, labels: tuple[str, ...] | None = None, use_cache: bool | None = None):
    """`data.scan_class_folders`: list, check (with the cache) and account for every file under root.

    Verdicts are cached per file (path, size, mtime), so a rescan of an unchanged folder decodes nothing.
    """
    from edgekit.data import IMAGE_EXTENSIONS, ScannedFolder, _class_folders, _fingerprint

    root = Path(root)
    if not root.is_dir():
        raise EdgekitError(f"{root}: no such data folder; pass a folder with one sub-folder per class")
    folders = _class_folders(root)
    if not folders:
        raise EdgekitError(f"{root}: no class folders; expected {root}/<class name>/<images>")
    skipped = stray_entries(root, folders)
    found = {}
    for folder in folders:
        found[folder.name], ignored = list_class_folder(folder, IMAGE_EXTENSIONS)
        skipped += ignored
    if labels is None:
        labels = tuple(name for name in sorted(found))
    else:
        unknown = sorted(set(found) - set(labels))
        if unknown:
            raise EdgekitError(
                f"{root / unknown[0]}: class {unknown[0]!r} is not one of the model's classes "
                f"({', '.join(labels)}); rename or remove that folder"
            )
    for name, files in found.items():
        if not files:
            raise EdgekitError(
                f"{root / name}: class folder has no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
    candidates = [(str(path), labels.index(name)) for name, files in found.items() for path in files]
    cache = scan_cache(root, spec.max_image_pixels, enabled=_cache_enabled(use_cache))
    decoder = []  # built on first use: an unchanged folder never needs TensorFlow to be checked
    results = check_files([c[0] for c in candidates], lambda p: _check(p, spec.max_image_pixels, decoder),
                                   cache, str(root))
    paths, targets, tf_ok = [], [], []
    for (path, target), (ok, reason) in zip(candidates, results):
        if reason is not None:
            if spec.strict:
                raise EdgekitError(f"{path}: {reason}; fix or remove it, or drop --strict to skip such files")
            skipped.append((path, reason))
            continue
        paths.append(path)
        targets.append(target)
        tf_ok.append(ok)
    for name in found:
        if labels.index(name) not in targets:
            raise EdgekitError(f"{root / name}: class folder has no readable image; fix or remove its files")
    report_skipped(skipped, root)
    return ScannedFolder(labels, paths, targets, tf_ok, skipped, _fingerprint(root, paths))


def _cache_enabled(use_cache: bool | None) -> bool:
    from edgekit.datacache import cache_settings

    return cache_settings().enabled if use_cache is None else use_cache


_decoder_lock = threading.Lock()


def _check(path: str, max_pixels: int, decoder: list) -> tuple[bool, str | None]:
    """(tf decodable, None) for a usable image, else (False, reason); `decoder` holds the lazy decoder."""
    from edgekit import data

    try:
        tf_ok = data.inspect_image(Path(path), max_pixels)
    except data.BadImage as exc:
        return False, str(exc)
    with _decoder_lock:
        if not decoder:
            decoder.append(_training_decoder())
    reason = decoder[0](path, tf_ok)
    return (False, reason) if reason is not None else (tf_ok, None)


def _training_decoder():
    """The pipeline's own decode function, run on one file: the scan accepts exactly what it accepts."""
    from edgekit.compat import tf
    from edgekit.data import _decode_fn

    # traced once as a graph, as tf.data runs it; a tiny output size: the decode is the check
    decode = tf.function(_decode_fn(8), input_signature=[tf.TensorSpec([], tf.string),
                                                         tf.TensorSpec([], tf.bool)]).get_concrete_function()

    def check(path: str, tf_ok: bool) -> str | None:
        try:
            decode(tf.constant(path), tf.constant(tf_ok))
        except (tf.errors.OpError, ValueError) as exc:
            return f"cannot be decoded by the training decoder ({_op_error_line(exc)})"
        return None

    return check


def _op_error_line(exc: Exception) -> str:
    """The one informative line of a TensorFlow graph error (not its call stack or node names)."""
    text = getattr(exc, "message", "") or str(exc)
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith((" ", "\t"))
             and not line.startswith(("Graph execution error", "Detected at node"))]
    return re.sub(r"\s*\[\[.*", "", lines[-1])[:120] if lines else "corrupt"


def _edgekit_version() -> str:
    from edgekit import __version__

    return __version__
