"""The data layer's vocabulary: what a dataset spec, a scanned folder and a set of images are.

The bottom of `edgekit.data`: it imports nothing else from the package, so every other module can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """The splits of one dataset plus the description that goes into the run's manifest."""

    labels: tuple[str, ...]
    train: ImageSet
    validation: ImageSet
    test: ImageSet | None = None
    description: dict = field(default_factory=dict)


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
