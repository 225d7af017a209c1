"""Listing and checking the files of an image folder, with every skipped file accounted for.

A scan decodes every image once to reject what training could not read, which is the slow part of a fresh
dataset (an hour for 50,000 phone photos). That one read and decode also yields the file's hashes and the
pixels the cache will hold (`Examiner`), so nothing reads the file again. Verdicts are cached per file by
path, size and modification time under `$EDGEKIT_HOME/cache/scan/`: an unchanged folder is checked with
one `stat` per file. Files that are not used are named with their reason, in the warning or in a list
file the warning points to, so nothing vanishes silently.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgekit.artifacts import edgekit_home, write_text_atomic
from edgekit.data import decode, hashing, pixelcache
from edgekit.data.filecache import FileResults, cache_enabled, per_file
from edgekit.data.types import IMAGE_EXTENSIONS, DataSpec, ScannedFolder
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

# bump when the check itself changes (another decoder, another rule): old verdicts are then not reused
SCAN_FORMAT = 2
LISTED_IN_WARNING = 5

Check = Callable[[str], "tuple[bool, str | None]"]


def read_image_bytes(path: str) -> bytes:
    """The one read of an image file on a first pass: the verdict, the hashes and the pixels all come
    from these bytes."""
    with open(path, "rb") as handle:
        return handle.read()


class Examiner:
    """The per-file work of a scan (a `Check`): read once; the verdict from the pipeline's own decode (at the
    run's image size when its pixels are kept for the cache, else at 8 px); the facts handed to `hash_files`.
    It notes when each usable JPEG was decoded, so a libjpeg warning (which names no file) can be traced."""

    def __init__(self, spec: DataSpec, hashes: bool, pixels: bool, count: int):
        self.spec, self.hashes, self.pixels, self.count = spec, hashes, pixels, count
        self.lazy: dict = {}  # built on first use: an unchanged folder never needs TensorFlow to be checked
        self.lock = threading.Lock()
        self.windows: list[tuple[float, float, str]] = []  # (decode started, ended, path) of usable JPEGs

    def setup(self) -> dict:
        with self.lock:
            if not self.lazy:
                spec = self.spec
                stage = pixelcache.staging(spec.image_size, self.count, decode.pixel_sources()) if self.pixels \
                    else None
                self.lazy.update(stage=stage, decoder=[], size=spec.image_size if stage is not None else 8,
                                 code=hashing.code_digest() if self.hashes else "")
        return self.lazy

    def __call__(self, path: str) -> tuple[bool, str | None]:
        work, limit = self.setup(), self.spec.max_image_pixels
        stat = os.stat(path)
        raw = read_image_bytes(path)
        started = time.monotonic()
        tf_ok, reason, decoded = decode.check_image(raw, limit, work["decoder"], work["size"])
        if reason is None and raw[:2] == b"\xff\xd8":
            self.windows.append((started, time.monotonic(), path))
        if self.hashes and reason is None:  # only usable files are hashed
            key = hashing.HandOff.key(path, stat, limit, work["code"])
            hashing.HANDED.give(key, hashing.facts_from_bytes(raw, limit))
        if work["stage"] is not None and decoded is not None:
            work["stage"].put(path, stat, tf_ok, decoded)
        return tf_ok, reason

    def libjpeg_lines_of(self, path: str) -> list[str]:
        """Decode one file alone, fd 2 captured: the libjpeg warnings that are this file's."""
        work = self.setup()
        raw = read_image_bytes(path)
        with tempfile.TemporaryFile() as captured:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(captured.fileno(), 2)
            try:
                decode.check_image(raw, self.spec.max_image_pixels, work["decoder"], work["size"])
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
        return [line for line in text.splitlines() if LIBJPEG_LINE.match(line)]


# libjpeg's warnings (jerror.h JWRN_*): TensorFlow's JPEG decoder prints them straight to fd 2 and decodes on
LIBJPEG_STARTS = ("Corrupt JPEG data", "Premature end of JPEG file", "Inconsistent progression sequence",
                  "Invalid SOS parameters", "Unknown Adobe color transform", "Warning: unknown JFIF revision")
LIBJPEG_LINE = re.compile("|".join(map(re.escape, LIBJPEG_STARTS)))


class LibjpegLines:
    """While open, fd 2 runs through a pipe: libjpeg's warning lines, which name no file, are kept with the
    time they arrived; every other byte is passed on as it comes. Python's own stderr writes (progress) go
    straight to where they went before, so a terminal stays a terminal."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []
        self.saved = None

    def __enter__(self) -> LibjpegLines:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no real fd 2: nothing to filter
            return self
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.saved, self.python_stderr = saved, None
        self.pump = threading.Thread(target=self._pump, args=(read_end,), daemon=True, name="libjpeg-lines")
        self.pump.start()
        try:
            is_fd2 = sys.stderr.fileno() == 2
        except (OSError, ValueError, AttributeError):  # a test's or an embedding's stream: leave it be
            is_fd2 = False
        if is_fd2:
            self.python_stderr = sys.stderr
            sys.stderr = open(os.dup(saved), "w", buffering=1, encoding=sys.stderr.encoding,
                              errors="backslashreplace")
        return self

    def _pump(self, read_end: int) -> None:
        pending = b""
        with open(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *complete, pending = (pending + chunk).split(b"\n")
                out = b"".join(line + b"\n" for line in complete if not self._kept(line))
                partial = pending.decode("utf-8", "replace")
                if not any(start.startswith(partial) or partial.startswith(start) for start in LIBJPEG_STARTS):
                    out, pending = out + pending, b""  # a partial line that is not libjpeg's: pass it on now
                self._write(out)
        self._write(pending)

    def _kept(self, line: bytes) -> bool:
        text = line.decode("utf-8", "replace").strip()
        if LIBJPEG_LINE.match(text):
            self.lines.append((time.monotonic(), text))
            return True
        return False

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.saved, data):]
        except OSError:  # stderr is gone (a closed terminal): nothing left to show it on
            pass

    def __exit__(self, *exc) -> None:
        if self.saved is None:
            return
        if self.python_stderr is not None:
            # not closed: whatever was set up meanwhile (TensorFlow's absl handler) may hold it; it writes to
            # the same place as the stream it stood in for
            sys.stderr.flush()
            sys.stderr = self.python_stderr
        os.dup2(self.saved, 2)  # the pipe's last write end closes: the pump reads what is left and ends
        self.pump.join(timeout=10)
        os.close(self.saved)


def warn_libjpeg(lines: list[tuple[float, str]], examine: Examiner, slack: float = 0.5) -> None:
    """One warning per file libjpeg complained about but that decoded (its pixels are used). A line is
    matched to the files whose decode was running when it arrived, each then decoded alone to be sure."""
    if not lines:
        return
    windows = sorted(examine.windows)
    starts = [started for started, _, _ in windows]
    longest = max((ended - started for started, ended, _ in windows), default=0.0)
    suspects = set()
    for at, _ in lines:  # only the decodes that started shortly before the line can have printed it
        first, last = bisect.bisect_left(starts, at - longest - slack), bisect.bisect_right(starts, at + slack)
        for _, ended, path in windows[first:last]:
            if ended + slack >= at:
                suspects.add(path)
    suspects = sorted(suspects)
    found = {path: examine.libjpeg_lines_of(path) for path in suspects}
    found = {path: text for path, text in found.items() if text}
    for path, text in found.items():
        log.warning("%s: libjpeg reports %s; it was decoded anyway and is used: check or re-save it", path,
                    "; ".join(dict.fromkeys(text)))
    if not found:
        log.warning("libjpeg reported %s while checking images, for a file it did not name", lines[0][1])


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_fingerprint(root: Path, paths: list[str]) -> str:
    """A hash of the file list (relative path and size): changes when files are added, removed or edited."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{Path(path).relative_to(root)}\t{Path(path).stat().st_size}\n".encode())
    return digest.hexdigest()


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


def stray_entries(root: Path, folders: list[Path]) -> list[tuple[str, str]]:
    """Entries beside the class folders: not in any class, so not used."""
    keep = {p.name for p in folders}
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


def scan_cache(root: Path, max_pixels: int, enabled: bool = True) -> FileResults:
    """The scan's verdicts for one folder: (tf decodable, reason it is not usable or None) per file.

    Keyed on the decoder's code too: the verdict is whether the training decoder reads the file."""
    return FileResults("scan", f"{Path(root).resolve()}\t{max_pixels}", SCAN_FORMAT, enabled,
                       valid=lambda v: len(v) == 2 and isinstance(v[0], bool) and isinstance(v[1], (str, type(None))),
                       sources=decode.pixel_sources())


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


def scan_class_folders(root: Path, spec: DataSpec, labels: tuple[str, ...] | None = None,
                       use_cache: bool | None = None, hashes: bool = False, pixels: bool = False) -> ScannedFolder:
    """Find and check every image under `root/<class>/`; `labels` fixes the class list and order.

    Verdicts are cached per file (path, size, mtime), so a rescan of an unchanged folder decodes nothing.
    A file that is checked is read once, and that read also serves what the caller will want next:
    `hashes` computes its duplicate-detection facts for `hash_files`, `pixels` keeps its decoded pixels at
    `spec.image_size` for the pixel cache, so a first `train` reads and decodes each file once.
    """
    root = Path(root)
    if not root.is_dir():
        raise EdgekitError(f"{root}: no such data folder; pass a folder with one sub-folder per class")
    folders = class_folders(root)
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
    cache = scan_cache(root, spec.max_image_pixels, enabled=cache_enabled(use_cache))
    examine = Examiner(spec, hashes, pixels, len(candidates))
    with LibjpegLines() as libjpeg:
        results = check_files([c[0] for c in candidates], examine, cache, str(root))
    warn_libjpeg(libjpeg.lines, examine)
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
    return ScannedFolder(labels, paths, targets, tf_ok, skipped, folder_fingerprint(root, paths))
