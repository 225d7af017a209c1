"""Decode once: the pipeline's decoded and resized pixels, cached on disk in shards and reused.

Decoding is the slow part of a real dataset (74 ms per 12 MP photo), and every epoch and every command
used to pay it again. An entry holds exactly what the pipeline's decode step produces for one list
of files at one image size, as raw float32 shards under `$EDGEKIT_HOME/cache/pixels/<key>/`.

float32 and not uint8: the bilinear resize yields fractional values, and the device runner feeds them
unrounded, so rounding to uint8 would make cached training and evaluation pixels differ from the
uncached pipeline and from the device by up to half a grey level.

The key covers each file's path, size and mtime and the image size, so a changed file makes a new
entry. The index records the format and a fingerprint of the decoder's source and library versions:
an entry from another edgekit or decoder, or a shard whose size or checksum is off, is rebuilt with a
notice. A full disk while writing leaves the run working without the cache. `EDGEKIT_CACHE=off`
(`edgekit --no-cache`) turns it off; `EDGEKIT_CACHE_LIMIT` (`--cache-limit`) bounds it, evicting
the least recently used entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from edgekit.artifacts import edgekit_home, write_json_atomic
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

FORMAT = 2  # 2: xxh3 checksums
INDEX = "index.json"
SHARD_BYTES = 32 << 20  # a shard is read whole; a few of them in flight bound the memory of a reader
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


def pixels_root() -> Path:
    return edgekit_home() / "cache" / "pixels"


def decoder_fingerprint() -> str:
    """Changes whenever what the decode step produces could change: its code or the libraries under it."""
    import inspect

    import PIL

    from edgekit import __version__, data
    from edgekit.compat import tf

    parts = [__version__, tf.__version__, PIL.__version__]
    for function in (data._decode_fn, data._pil_decode):
        try:
            parts.append(inspect.getsource(function))
        except (OSError, TypeError):
            parts.append(function.__qualname__)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


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
        """(pixels, label) elements; in order, or with the shard order shuffled for training."""
        from edgekit.compat import tf

        size = self.image_size
        files = [str(self.directory / s["file"]) for s in self.shards]
        counts = [int(s["n"]) for s in self.shards]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        labels = tf.constant(np.asarray(targets, dtype=np.int32))

        def decode(record):
            return tf.reshape(tf.io.decode_raw(record, tf.float32), [size, size, 3])

        def read(file, start, count):
            # One record per image, each decoded into its own buffer. Slicing a whole shard read at once
            # (from_tensor_slices) gives images that share the shard's buffer: a shuffle buffer holding
            # one image per shard then keeps every shard alive, and training memory grew with the
            # dataset (+1.6 GB from 5,000 to 20,000 images at 96 px).
            pixels = tf.data.FixedLengthRecordDataset(file, size * size * 3 * 4, buffer_size=1 << 20).map(decode)
            return tf.data.Dataset.zip((pixels, tf.data.Dataset.from_tensor_slices(labels[start:start + count])))

        ds = tf.data.Dataset.from_tensor_slices((files, starts, np.asarray(counts, np.int64)))
        if not training:
            return ds.flat_map(read)
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        return ds.interleave(read, cycle_length=min(4, len(files)), block_length=1)


def open_or_build(paths: list[str], tf_decodable: list[bool], image_size: int,
                  decoded_batches: Callable[[], Iterable[np.ndarray]]) -> CachedPixels | None:
    """The verified cache entry for these files, built from `decoded_batches` when missing or damaged.

    None when the cache is off, over its limit, or cannot be written: the caller then decodes as before.
    """
    settings = cache_settings()
    if not settings.enabled or not paths:
        return None
    root = pixels_root()
    directory = root / entry_key(paths, tf_decodable, image_size)
    fingerprint = decoder_fingerprint()
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
    from edgekit.datascan import progress

    per_image = image_size * image_size * 3 * 4
    per_shard = max(1, SHARD_BYTES // per_image)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    shards: list[dict] = []
    handle, digest, in_shard, written = None, None, 0, 0
    log.info("decoding %d images once at %d px into the pixel cache %s", count, image_size, directory)
    try:
        with progress(count, "decoding once") as bar:
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
    """Why an entry cannot be trusted (None when it can): format, decoder, sizes and every shard's checksum."""
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
        for shard in shards:
            path = directory / shard["file"]
            if path.stat().st_size != int(shard["n"]) * per_image:
                return f"is damaged ({shard['file']} has the wrong size)"
            if _checksum(path) != shard["xxh3"]:
                return f"is damaged ({shard['file']} fails its checksum)"
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return f"is damaged ({str(exc)[:80]})"
    return None


def _checksum(path: Path) -> str:
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
