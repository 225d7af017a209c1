"""The data layer's vocabulary: what a dataset spec, a scanned folder and a set of images are.

The bottom of `edgekit.data`: it imports nothing else from the package, so every other module can use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runner import IMAGE_EXTENSIONS  # noqa: F401 - the device's list, so classify DIR finds what trains

SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class DataSpec:
    """How to (re)load a dataset: the same spec always yields the same splits."""

    data: str | None = None
    extra_data: tuple[str, ...] = ()
    image_size: int = 32
    seed: int = 42
    validation_fraction: float = 0.2
    strict: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    exclude: str | None = None  # an exclusion list (`edgekit data check --write-exclusions`)
    group_duplicates: bool = True  # False: the plain stratified split of runs made before duplicate groups


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class DuplicateRecord:
    """What the duplicate check found and how the split kept copies on one side (`edgekit.data.split`)."""

    method: str
    exact_groups: int
    near_groups: int
    images_in_groups: int
    handling: str
    leaked: dict[str, int]  # per held-out side: images with a copy in training
    leak_examples: tuple[dict[str, str], ...] = ()  # {side: path, "train": path, "kind": exact|near}


@dataclass(frozen=True)
class SplitRecord:
    """How the files were divided and the counts that came out (fraction and seed are in the spec)."""

    train: int
    validation: int
    test: int = 0
    layout: str = ""  # folders: "class folders, stratified split", "train/validation folders", ...
    duplicates: DuplicateRecord | None = None  # None: no duplicate check (digits, or runs made before it)


@dataclass(frozen=True)
class ExclusionRecord:
    """The exclusion list a load applied: which file, its sha256, and how many of its paths matched."""

    path: str
    sha256: str
    listed: int
    excluded: int = 0


@dataclass(frozen=True)
class ExtraDataRecord:
    """One extra (feedback) folder folded into the training split."""

    path: str
    n_files: int
    fingerprint: str
    skipped: tuple[SkippedFile, ...] = ()


@dataclass(frozen=True)
class DatasetRecord:
    """What a run was trained on, as its manifest keeps it: the full spec that reloads the same splits,
    plus what the load found (counts, fingerprint, skipped files, duplicates, exclusions, extra folders)."""

    spec: DataSpec
    source: str  # "digits" or "folder"
    fingerprint: str
    n_files: int  # images used (the digits: 1,797)
    split: SplitRecord | None = None  # None: a folder `edgekit eval --data` read whole
    origin: str = ""  # the digits: where the pixels come from
    path: str = ""  # a folder: its resolved path (the spec keeps the path as the run was given it)
    skipped: tuple[SkippedFile, ...] = ()
    exclude: ExclusionRecord | None = None
    extra_data: tuple[ExtraDataRecord, ...] = ()

    @property
    def reload_spec(self) -> DataSpec:
        """The spec a later stage (eval, compress, bench) reloads the splits with: the recorded one, but
        lenient. `strict` decided nothing (a strict load that succeeded used the files a lenient one uses),
        and a reader's error should not tell the user to drop a --strict they never passed."""
        return dataclasses.replace(self.spec, strict=False)


@dataclass(frozen=True)
class ImageSet:
    """Labelled images: file paths (folder datasets) or in-memory uint8 pixels (embedded digits)."""

    labels: tuple[str, ...]
    targets: np.ndarray
    paths: tuple[str, ...] | None = None
    tf_decodable: tuple[bool, ...] | None = None
    pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: np.ndarray) -> ImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            labels=self.labels,
            targets=self.targets[indices],
            paths=tuple(self.paths[i] for i in indices) if self.paths is not None else None,
            tf_decodable=tuple(self.tf_decodable[i] for i in indices) if self.tf_decodable else None,
            pixels=self.pixels[indices] if self.pixels is not None else None,
        )

    def concat(self, other: ImageSet) -> ImageSet:
        if (self.paths is None) != (other.paths is None):
            raise EdgekitError("cannot mix in-memory and file datasets; export the digits to a folder first")
        return ImageSet(
            labels=self.labels,
            targets=np.concatenate([self.targets, other.targets]),
            paths=(self.paths or ()) + (other.paths or ()) if self.paths is not None else None,
            tf_decodable=(self.tf_decodable or ()) + (other.tf_decodable or ()) if self.paths else None,
            pixels=np.concatenate([self.pixels, other.pixels]) if self.pixels is not None else None,
        )


@dataclass
class DatasetSplits:
    """The splits of one dataset plus the record of them that goes into the run's manifest."""

    labels: tuple[str, ...]
    train: ImageSet
    validation: ImageSet
    test: ImageSet | None
    record: DatasetRecord


@dataclass
class ScannedFolder:
    """One class-folder tree after the scan: the usable files and every skipped one with its reason."""

    labels: tuple[str, ...]
    paths: list[str]
    targets: list[int]
    tf_decodable: list[bool]
    skipped: list[tuple[str, str]]
    fingerprint: str

    def image_set(self) -> ImageSet:
        return ImageSet(self.labels, np.asarray(self.targets, dtype=np.int32), tuple(self.paths),
                        tuple(self.tf_decodable))
