"""Decode once: the pipeline's decoded and resized pixels, cached on disk in shards and reused.

Decoding is the slow part of a real dataset (74 ms per 12 MP photo), and every epoch and every command
used to pay it again. An entry holds exactly what the pipeline's decode step produces for one list
of files at one image size, as raw float32 shards under `$EDGEKIT_HOME/cache/pixels/<key>/`.

float32 and not uint8: the bilinear resize yields fractional values, and the device runner feeds them
unrounded, so rounding to uint8 would make cached training and evaluation pixels differ from the
uncached pipeline and from the device by up to half a grey level.

The key covers each file's path, size and mtime and the image size, so a changed file makes a new
entry. The index records the format and a fingerprint of every source file that turns a file into
pixels (edgekit.data.pipeline, edgekit.data.decode and the device runner) and of the TensorFlow,
Pillow and numpy versions: an entry from another edgekit, decoder or library, or a shard whose size
is off, is rebuilt with a notice. Each shard's checksum is checked as the shard is read, not the whole
entry up front (that was an 11 GiB read before every command at 224 px): a shard found damaged mid-pass
stops the command with one line and removes the entry, which the next run rebuilds. A full disk
while writing leaves the run working without the cache. `EDGEKIT_CACHE=off` (`edgekit --no-cache`)
turns it off; `EDGEKIT_CACHE_LIMIT` (`--cache-limit`) bounds it, evicting the least recently used entries.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from edgekit import __version__
from edgekit.artifacts import edgekit_home, write_json_atomic
from edgekit.data.filecache import cache_settings, progress, source_digest
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

FORMAT = 2  # 2: xxh3 checksums
INDEX = "index.json"
SHARD_BYTES = 32 << 20  # a shard is read whole; a few of them in flight bound the memory of a reader


def pixels_root() -> Path:
    return edgekit_home() / "cache" / "pixels"


def staged_root() -> Path:
    """The scratch files of `Staged`, apart from the entries (each process's own, deleted when it ends)."""
    return edgekit_home() / "cache" / "staged"


def decoder_fingerprint(sources: list[Path]) -> str:
    """Changes whenever what the decode step produces could change: the bytes of every source file that
    turns a file into pixels (`sources`: for the pipeline, `pipeline.pixel_sources()`) and the versions of
    the libraries under them."""
    import PIL

    from edgekit.compat import tf

    versions = "\n".join([__version__, tf.__version__, PIL.__version__, np.__version__])
    return hashlib.sha256(f"{versions}\n{source_digest(sources)}".encode()).hexdigest()


def entry_key(paths: Iterable[str], tf_decodable: Iterable[bool], image_size: int) -> str:
    digest = hashlib.sha256(f"{image_size}\n".encode())
    for path, ok in zip(paths, tf_decodable):
        stat = os.stat(path)
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\t{int(ok)}\n".encode())
    return digest.hexdigest()[:40]


@dataclass
class CachedPixels:
    """One verified cache entry: shards of float32 [n, size, size, 3] in the image list's order."""

    directory: Path
    image_size: int
    shards: list[dict]

    def dataset(self, targets: np.ndarray, training: bool, seed: int):
        """(pixels, label) elements; in order, or with the shard order shuffled for training.

        Each shard is checked against its checksum as it is read (`read_shard`), not the whole entry
        before use: an 11 GiB entry cost a full read on every command's start. A damaged shard stops the
        pass with one line and removes the entry, so the next run rebuilds it; it never yields wrong pixels.
        """
        from edgekit.compat import tf

        size = self.image_size
        files = [str(self.directory / s["file"]) for s in self.shards]
        sums = [str(s["xxh3"]) for s in self.shards]
        counts = [int(s["n"]) for s in self.shards]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        labels = tf.constant(np.asarray(targets, dtype=np.int32))

        def read(file, digest, start, count):
            # unbatch copies each image into its own buffer: a shuffle buffer holding one image per shard
            # does not keep whole shards alive (memory grew with the dataset when images shared a buffer)
            shard = tf.numpy_function(functools.partial(read_shard, size=size), [file, digest], tf.float32,
                                      stateful=False)
            pixels = tf.data.Dataset.from_tensors(tf.ensure_shape(shard, [None, size, size, 3])).unbatch()
            return tf.data.Dataset.zip((pixels, tf.data.Dataset.from_tensor_slices(labels[start:start + count])))

        ds = tf.data.Dataset.from_tensor_slices((files, sums, starts, np.asarray(counts, np.int64)))
        if not training:
            return ds.flat_map(read)
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        return ds.interleave(read, cycle_length=min(4, len(files)), block_length=1)


class DamagedShard(EdgekitError):
    """A pixel-cache shard whose bytes are not what was written: the message is the one line users see."""


DAMAGED = "is damaged on disk"  # in the message, so a caller that only sees TensorFlow's wrapper can find it


def read_shard(file: bytes | str, digest: bytes | str, size: int) -> np.ndarray:
    """One shard's images, after checking its bytes against the checksum the index recorded.

    Each read first hands the memory freed since the last one back to the system (`release_freed_memory`).
    """
    release_freed_memory()
    path = Path(os.fsdecode(file))
    expected = digest.decode() if isinstance(digest, bytes) else digest
    try:
        data = path.read_bytes()
        problem = None if xxhash.xxh3_64_hexdigest(data) == expected else "fails its checksum"
        if problem is None and len(data) % (size * size * 3 * 4):
            problem = "has the wrong size"
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or exc})"
    if problem is not None:
        with contextlib.suppress(OSError):  # no index: the next open_or_build rebuilds the entry
            (path.parent / INDEX).unlink()
        raise DamagedShard(f"pixel cache entry {path.parent} {DAMAGED}: {path.name} {problem}; the entry was "
                           "removed, run the command again to rebuild it")
    return np.frombuffer(data, dtype=np.float32).reshape(-1, size, size, 3)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows): nothing to call
        return None


def release_freed_memory() -> None:
    """Return the free pages inside the C heap to the system (glibc's malloc_trim; elsewhere nothing).

    Training holds thousands of images in the shuffle buffer, each its own allocation, and frees them in
    random order as new ones arrive: glibc keeps the holes, and the process's resident memory grew with the
    number of images passed through, i.e. with the dataset (1.73 GB at 20,000 images against 1.26 GB at
    5,000, 96 px, for the same 512 MiB buffer). Called once per shard read, so the slack stays within about
    a shard's worth of churn, whatever the dataset size; it costs far less than reading the shard.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def damage_line(exc: BaseException) -> str | None:
    """The one-line message of a damaged shard found mid-pass (TensorFlow wraps it in its own error)."""
    match = re.search(rf"pixel cache entry \S+ {DAMAGED}[^\n]*", str(exc))
    return match.group(0) if match else None


class Staged:
    """Pixels the scan decoded for its verdicts, at the image size a run trains at, kept in one scratch file
    of this process until the pipeline builds its cache entries from them (`staged_batches`).

    The scan's check is the pipeline's own decode, so its pixels are the entry's pixels: a first `train`
    then reads and decodes each file once instead of once to check it and again to fill the cache. The
    scratch file is this process's alone (a later process finds the finished entries), is deleted when the
    process ends, and every row is checked against its checksum when it is copied into an entry.
    """

    def __init__(self, image_size: int):
        self.image_size, self.per_image = image_size, image_size * image_size * 3 * 4
        self.rows: dict[str, tuple[int, int, bool, int, str]] = {}  # path -> size, mtime_ns, tf_ok, row, xxh3
        self.lock = threading.Lock()
        self.file: Path | None = None
        self.handle = None
        self.failed = False

    def put(self, path: str, stat: os.stat_result, tf_ok: bool, pixels: np.ndarray) -> None:
        data = np.ascontiguousarray(pixels, dtype=np.float32).tobytes()
        if len(data) != self.per_image:
            return
        with self.lock:
            if self.failed:
                return
            try:
                if self.handle is None:
                    staged_root().mkdir(parents=True, exist_ok=True)
                    fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-{self.image_size}-", suffix=".f32",
                                                dir=staged_root())
                    self.file, self.handle = Path(name), os.fdopen(fd, "wb")
                    atexit.register(self.close)
                self.handle.write(data)
                self.rows[path] = (stat.st_size, stat.st_mtime_ns, bool(tf_ok), len(self.rows),
                                   xxhash.xxh3_64_hexdigest(data))
            except OSError as exc:
                self.failed = True
                log.warning("pixel cache: cannot keep the scan's pixels in %s (%s); the cache is filled by "
                            "decoding the files again", staged_root(), exc.strerror or exc)
                self.close()

    def batches(self, paths: list[str], tf_decodable: list[bool], batch: int = 64):
        """A `decoded_batches` for open_or_build when every file is staged unchanged, else None."""
        with self.lock:
            if self.failed or self.handle is None:
                return None
            try:
                self.handle.flush()
                if not self.file.is_file():
                    return None
                rows = []
                for path, ok in zip(paths, tf_decodable):
                    stat, staged = os.stat(path), self.rows.get(path)
                    if staged is None or staged[:3] != (stat.st_size, stat.st_mtime_ns, bool(ok)):
                        return None
                    rows.append(staged)
            except OSError:
                return None
            file = self.file
        size = self.image_size

        def read():
            fd = os.open(file, os.O_RDONLY)
            try:
                for start in range(0, len(rows), batch):
                    out = np.empty((min(batch, len(rows) - start), size, size, 3), np.float32)
                    for i, (*_, row, digest) in enumerate(rows[start:start + batch]):
                        data = os.pread(fd, self.per_image, row * self.per_image)
                        if xxhash.xxh3_64_hexdigest(data) != digest:
                            raise EdgekitError(f"pixel cache: the scan's pixels in {file} {DAMAGED} (row {row} "
                                               "fails its checksum); run the command again")
                        out[i] = np.frombuffer(data, np.float32).reshape(size, size, 3)
                    yield out
            finally:
                os.close(fd)

        return read

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.handle is not None:
                self.handle.close()
            if self.file is not None:
                self.file.unlink(missing_ok=True)
        self.handle = None
        self.rows = {}


_STAGED: dict[tuple, Staged] = {}
_STAGED_LOCK = threading.Lock()


def _stage_key(image_size: int, sources: list[Path]) -> tuple:
    # the code that made the pixels is in the key, as in an entry's: a decoder edited (or swapped by a test)
    # in this process never hands over pixels of the old one
    return str(staged_root()), image_size, source_digest(sources)


def staging(image_size: int, count: int, sources: list[Path]) -> Staged | None:
    """Where a scan about to decode `count` files with the code in `sources` keeps their pixels; None when
    the cache is off or they could not be cached anyway (over the cache limit or the free space)."""
    settings = cache_settings()
    needed = count * image_size * image_size * 3 * 4
    if not settings.enabled or needed > settings.limit_bytes:
        return None
    try:
        staged_root().mkdir(parents=True, exist_ok=True)
        for old in staged_root().iterdir():  # left by a killed process
            if time.time() - old.stat().st_mtime > 6 * 3600:
                old.unlink(missing_ok=True)
        if shutil.disk_usage(staged_root()).free < 2 * needed + (256 << 20):  # the scratch and the entries
            return None
    except OSError:
        return None
    with _STAGED_LOCK:
        return _STAGED.setdefault(_stage_key(image_size, sources), Staged(image_size))


def staged_batches(paths: list[str], tf_decodable: list[bool], image_size: int, sources: list[Path]):
    """The scan's pixels of these files, made by the code in `sources`, as a `decoded_batches` for
    open_or_build; None unless every file was staged unchanged."""
    staged = _STAGED.get(_stage_key(image_size, sources))
    return staged.batches(paths, tf_decodable) if staged is not None else None


def open_or_build(paths: list[str], tf_decodable: list[bool], image_size: int,
                  decoded_batches: Callable[[], Iterable[np.ndarray]], sources: list[Path]) -> CachedPixels | None:
    """The verified cache entry for these files, built from `decoded_batches` when missing or damaged.

    `sources` are the files whose code produces `decoded_batches`: their bytes are part of the entry's check.

    None when the cache is off, over its limit, or cannot be written: the caller then decodes as before.
    """
    settings = cache_settings()
    if not settings.enabled or not paths:
        return None
    root = pixels_root()
    directory = root / entry_key(paths, tf_decodable, image_size)
    fingerprint = decoder_fingerprint(sources)
    if directory.exists():
        problem = _problem(directory, len(paths), image_size, fingerprint)
        if problem is None:
            os.utime(directory / INDEX)  # recently used: the last to be evicted
            return CachedPixels(directory, image_size, _read_index(directory)["shards"])
        log.warning("pixel cache %s %s; rebuilding it", directory, problem)
        shutil.rmtree(directory, ignore_errors=True)
    needed = len(paths) * image_size * image_size * 3 * 4
    if needed > settings.limit_bytes:
        log.warning("pixel cache: %d images at %d px need %s, over the cache limit of %s; decoding every pass "
                    "instead (raise it with --cache-limit or EDGEKIT_CACHE_LIMIT)", len(paths), image_size,
                    _human(needed), _human(settings.limit_bytes))
        return None
    try:
        root.mkdir(parents=True, exist_ok=True)
        _evict(root, settings.limit_bytes - needed)
        free = shutil.disk_usage(root).free
        if free < needed + (256 << 20):
            raise OSError(28, f"needs {_human(needed)}, {_human(free)} free")
        return _build(directory, len(paths), image_size, fingerprint, decoded_batches)
    except OSError as exc:
        log.warning("pixel cache: cannot write %s (%s); continuing without the cache", root,
                    exc.strerror or exc)
        return None


def _build(directory: Path, count: int, image_size: int, fingerprint: str,
           decoded_batches: Callable[[], Iterable[np.ndarray]]) -> CachedPixels:
    """Stream decoded batches into shard files in a scratch folder, then rename it into place."""
    per_image = image_size * image_size * 3 * 4
    per_shard = max(1, SHARD_BYTES // per_image)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    shards: list[dict] = []
    handle, digest, in_shard, written = None, None, 0, 0
    try:
        with progress(count, f"filling the pixel cache at {image_size} px", f" ({directory})",
                      unit="image(s)") as bar:
            for batch in decoded_batches():
                batch = np.ascontiguousarray(batch, dtype=np.float32)
                start = 0
                while start < len(batch):
                    if handle is None:
                        name = f"shard-{len(shards):05d}.f32"
                        handle, digest, in_shard = open(scratch / name, "wb"), xxhash.xxh3_64(), 0
                    take = min(len(batch) - start, per_shard - in_shard)
                    chunk = memoryview(batch[start:start + take]).cast("B")
                    handle.write(chunk)
                    digest.update(chunk)
                    in_shard, start, written = in_shard + take, start + take, written + take
                    if in_shard == per_shard:
                        handle.close()
                        shards.append({"file": name, "n": in_shard, "xxh3": digest.hexdigest()})
                        handle = None
                bar.update(len(batch))
        if handle is not None:
            handle.close()
            shards.append({"file": name, "n": in_shard, "xxh3": digest.hexdigest()})
            handle = None
        if written != count:
            raise EdgekitError(f"pixel cache: the pipeline produced {written} images for {count} files")
        write_json_atomic(scratch / INDEX, {"format": FORMAT, "decoder": fingerprint, "image_size": image_size,
                                            "n": count, "dtype": "float32", "shards": shards,
                                            "created": time.time()})
        try:
            scratch.rename(directory)
        except OSError:
            if not directory.exists():  # anything but "another process finished the same entry first"
                raise
    finally:
        if handle is not None:
            handle.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return CachedPixels(directory, image_size, shards)


def _read_index(directory: Path) -> dict:
    return json.loads((directory / INDEX).read_text())


def _problem(directory: Path, count: int, image_size: int, fingerprint: str) -> str | None:
    """Why an entry cannot be trusted (None when it can): format, decoder and sizes, from the index and `stat`
    alone; each shard's checksum is checked when the shard is read (`read_shard`)."""
    try:
        index = _read_index(directory)
    except (OSError, ValueError) as exc:
        return f"has an unreadable index ({str(exc)[:80]})"
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        return "was written in another cache format"
    if index.get("decoder") != fingerprint:
        return "was written by another edgekit version or decoder"
    if index.get("image_size") != image_size or index.get("n") != count:
        return "does not match its dataset"
    per_image = image_size * image_size * 3 * 4
    try:
        shards = index["shards"]
        if sum(int(s["n"]) for s in shards) != count:
            return "does not hold every image"
        for shard in shards:  # sizes only: the bytes are checked shard by shard as they are read
            path = directory / shard["file"]
            if path.stat().st_size != int(shard["n"]) * per_image:
                return f"is damaged ({shard['file']} has the wrong size)"
            if not isinstance(shard["xxh3"], str):
                return f"is damaged ({shard['file']} has no checksum)"
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return f"is damaged ({str(exc)[:80]})"
    return None


def _evict(root: Path, budget: int) -> None:
    """Remove least recently used entries until the rest fit in `budget` bytes."""
    entries = []
    for directory in root.iterdir():
        if directory.name.startswith("."):
            if time.time() - directory.stat().st_mtime > 6 * 3600:  # the scratch of a killed build
                shutil.rmtree(directory, ignore_errors=True)
            continue
        size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        try:
            used = (directory / INDEX).stat().st_mtime
        except OSError:
            used = 0.0
        entries.append((used, size, directory))
    total = sum(size for _, size, _ in entries)
    for _, size, directory in sorted(entries, key=lambda e: e[0]):
        if total <= budget:
            break
        log.info("pixel cache: evicting %s (%s) to stay under the limit", directory.name, _human(size))
        shutil.rmtree(directory, ignore_errors=True)
        total -= size


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"
