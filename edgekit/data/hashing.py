"""Content and perceptual hashes of image files, and the duplicate groups they imply.

An exact duplicate has the same bytes (sha256); a near duplicate has a 64-bit DCT perceptual hash
(imagehash.phash) within a few bits of another image's: a re-saved JPEG, a resized copy, a burst frame.
Both come from one read per file: the scan computes them from the bytes it reads for its verdict and
hands them over (HandOff); they are cached per file, so `train` can afford this on every start.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from edgekit.data.filecache import FileResults, cache_enabled, per_file, source_digest

NEAR_DISTANCE = 4  # of 64 bits; re-encoded and resized copies land within 0-2 in practice
THUMB_SIDE = 64  # the perceptual hash only looks at 32x32, so decode no larger than needed
FACTS_FORMAT = 2  # bump when ImageFacts or how it is computed changes
FLAT_STD = 1.0  # grey levels: a thumbnail this uniform has no structure for a perceptual hash to describe
GRAY_TOLERANCE = 3  # max channel spread (grey levels) for an RGB image to count as greyscale


@dataclass(frozen=True)
class ImageFacts:
    """What one decode of a file tells us; `phash` is 0 and `width` 0 when the file cannot be decoded."""

    sha256: str
    phash: int
    width: int
    height: int
    grayscale: bool
    size_bytes: int
    flat: bool = False  # one colour (a 1 px image, a blank frame): its perceptual hash says nothing


def image_facts(path: str, max_pixels: int = 40_000_000) -> ImageFacts:
    """The facts of one file, read once."""
    return facts_from_bytes(Path(path).read_bytes(), max_pixels)


def facts_from_bytes(data: bytes, max_pixels: int = 40_000_000) -> ImageFacts:
    """sha256 of the bytes, and the perceptual hash and look of a 64 px thumbnail decoded from them.

    The thumbnail is its own reduced decode (a JPEG at 1/8 scale), not the training decode's pixels: those
    depend on the image size a run trains at, and the facts (so the duplicate groups, so the split) must not.
    """
    import imagehash
    from PIL import Image

    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return ImageFacts(sha, 0, width, height, False, len(data))
                image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at a reduced scale
                thumb = image.convert("RGB").resize((THUMB_SIDE, THUMB_SIDE))
    except Exception:  # the scan has the verdict on unreadable files; here they simply hash to nothing
        return ImageFacts(sha, 0, 0, 0, False, len(data))
    pixels = np.asarray(thumb, dtype=np.int16)
    gray = bool(np.ptp(pixels, axis=2).max() <= GRAY_TOLERANCE)
    flat = bool(pixels.std(axis=(0, 1)).max() < FLAT_STD)
    bits = imagehash.phash(thumb).hash.flatten()
    return ImageFacts(sha, int(np.packbits(bits).view(">u8")[0]), width, height, gray, len(data), flat)


class HandOff:
    """Facts computed by a scan from the bytes it read anyway, kept in this process until `hash_files` asks.

    A first `train` used to read every file for the scan and again for the hashes; now the scan's one read
    yields both. Keyed like the facts cache (path, size, mtime, pixel limit and this module's code), taken
    at most once, and bounded: a hand-off is not a second cache.
    """

    LIMIT = 500_000

    def __init__(self):
        self.facts: dict[tuple, ImageFacts] = {}
        self.lock = threading.Lock()

    @staticmethod
    def key(path: str, stat: os.stat_result, max_pixels: int, code: str) -> tuple:
        return path, stat.st_size, stat.st_mtime_ns, max_pixels, code

    def give(self, key: tuple, facts: ImageFacts) -> None:
        with self.lock:
            if len(self.facts) < self.LIMIT:
                self.facts[key] = facts

    def take(self, key: tuple) -> ImageFacts | None:
        with self.lock:
            return self.facts.pop(key, None)


HANDED = HandOff()


def code_digest() -> str:
    """What the facts cache and the hand-off are keyed on: the bytes of the code that computes facts."""
    return source_digest([Path(__file__)])


def hash_files(paths: list[str], max_pixels: int = 40_000_000, workers: int = 4,
               use_cache: bool | None = None) -> list[ImageFacts]:
    """Facts for every path, in order (Pillow releases the GIL while decoding, so threads help).

    Cached per file by path, size and mtime under `$EDGEKIT_HOME/cache/facts/` (one file per folder):
    `train`, `eval`, `compress` and `bench` all rebuild the group-aware split, and hashing 20,000 files
    again each time cost more than the rest of an `eval`. Facts the scan computed in this process from the
    bytes it read (HANDED) are taken instead of reading the file again.
    """
    if not paths:
        return []
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    cache = FileResults("facts", f"{folder}\t{max_pixels}", FACTS_FORMAT, enabled=cache_enabled(use_cache),
                        valid=_is_facts, sources=[Path(__file__)])
    code = code_digest()

    def facts(path: str) -> tuple:
        try:
            handed = HANDED.take(HandOff.key(path, os.stat(path), max_pixels, code))
        except OSError:
            handed = None
        return astuple(handed if handed is not None else image_facts(path, max_pixels))

    found = per_file(list(paths), facts, cache, "hashing images", workers)
    # None only for a file that vanished since the scan: image_facts then raises the OSError that says so
    return [ImageFacts(*values) if values is not None else image_facts(path, max_pixels)
            for path, values in zip(paths, found)]


def _is_facts(values: list) -> bool:
    """Whether a cache entry is exactly what image_facts stores (sha256, phash, width, height, grey, bytes, flat)."""
    types = (str, int, int, int, bool, int, bool)
    return len(values) == len(types) and all(type(v) is t for v, t in zip(values, types))  # noqa: E721


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose 64-bit hashes differ in at most `max_distance` bits.

    Pigeonhole (multi-index hashing): cut the 64 bits into `max_distance + 1` chunks; two hashes within
    `max_distance` bits agree exactly on at least one chunk, so only images sharing a chunk value are
    compared. Near-linear where all pairs would be 2e8 comparisons at 20,000 images.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    chunks = max_distance + 1
    edges = np.linspace(0, 64, chunks + 1).astype(int)
    candidates = [np.zeros((0, 2), dtype=np.int64)]
    for low, high in zip(edges[:-1], edges[1:]):
        keys = (hashes >> np.uint64(low)) & np.uint64((1 << int(high - low)) - 1)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        for offset in range(1, len(hashes)):  # equal keys are adjacent once sorted
            same = ordered[offset:] == ordered[:-offset]
            if not same.any():
                break
            a, b = order[:-offset][same], order[offset:][same]
            candidates.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    pairs = np.unique(np.concatenate(candidates), axis=0)
    close = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= max_distance
    return [(int(i), int(j)) for i, j in pairs[close]]


def duplicate_groups(facts: list[ImageFacts], max_distance: int | None = NEAR_DISTANCE) -> list[dict]:
    """Groups of two or more images that are copies of each other (exact) or look alike (near).

    Groups are connected components, so a chain of near copies is one group: that is what a split
    must keep together. `kind` is "exact" when every member has the same bytes. Undecodable and flat
    (one-colour) files only join exact groups: a perceptual hash of a uniform image is the same for every
    colour, so two unrelated blank frames would look like copies. `max_distance=None` looks for exact copies
    only.
    """
    n = len(facts)
    union = _UnionFind(n)
    first: dict[str, int] = {}
    for index, fact in enumerate(facts):
        union.union(first.setdefault(fact.sha256, index), index)
    if max_distance is not None:
        decoded = np.flatnonzero([f.width > 0 and not f.flat for f in facts])
        # hashing only one file per exact group keeps the pair count down on heavily copied folders
        unique = [i for i in decoded if first[facts[i].sha256] == i]
        for a, b in near_pairs(np.array([facts[i].phash for i in unique], dtype=np.uint64), max_distance):
            union.union(unique[a], unique[b])
    members: dict[int, list[int]] = {}
    for index in range(n):
        members.setdefault(union.find(index), []).append(index)
    groups = []
    for indices in members.values():
        if len(indices) > 1:
            exact = len({facts[i].sha256 for i in indices}) == 1
            groups.append({"kind": "exact" if exact else "near", "members": indices})
    return sorted(groups, key=lambda g: g["members"][0])


def group_ids(n: int, groups: list[dict]) -> np.ndarray:
    """One id per image: images in the same duplicate group share it, every other image has its own."""
    ids = np.arange(n)
    for group in groups:
        ids[group["members"]] = group["members"][0]
    return ids
