"""Datasets: the embedded digits and class-folder trees, loaded into splits, and reloaded from a run.

Images are checked once before any training starts, because tf.data fails mid-epoch on the first
corrupt file; bad files are skipped and listed (or fatal with `strict`). The `DatasetRecord` each load
returns goes into the run's manifest and holds the spec itself, so a later stage reloads the same splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from edgekit.data.exclude import Exclusions
from edgekit.data.pipeline import load_pixels
from edgekit.data.scan import scan_class_folders
from edgekit.data.split import split_without_leaks, stratified_split
from edgekit.data.types import (
    SPLIT_NAMES,
    DatasetRecord,
    DatasetSplits,
    DataSpec,
    ExclusionRecord,
    ExtraDataRecord,
    ImageSet,
    ScannedFolder,
    SkippedFile,
    SplitRecord,
)
from edgekit.errors import EdgekitError


def render_digits(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as uint8 RGB at `image_size` (bilinear, like the file pipeline)."""
    from sklearn.datasets import load_digits

    from edgekit.compat import tf

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).round().astype(np.float32)[..., None]
    big = tf.image.resize(small, [image_size, image_size], method="bilinear").numpy()
    pixels = np.clip(np.round(big), 0, 255).astype(np.uint8).repeat(3, axis=-1)
    return pixels, digits.target.astype(np.int32)


def load_digits_splits(spec: DataSpec) -> DatasetSplits:
    import sklearn

    pixels, targets = render_digits(spec.image_size)
    labels = tuple(str(i) for i in range(10))
    full = ImageSet(labels=labels, targets=targets, pixels=pixels)
    train_idx, val_idx = stratified_split(targets, spec.validation_fraction, spec.seed)
    record = DatasetRecord(
        spec=spec, source="digits", origin=f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
        n_files=int(len(targets)), fingerprint=hashlib.sha256(pixels.tobytes()).hexdigest(),
        split=SplitRecord(train=int(len(train_idx)), validation=int(len(val_idx))))
    return DatasetSplits(labels, full.subset(train_idx), full.subset(val_idx), None, record)


def export_digits(out_dir: Path, image_size: int = 32, limit_per_class: int | None = None) -> Path:
    """Write the embedded digits as a class-folder PNG dataset (the format `--data` reads)."""
    from PIL import Image

    pixels, targets = render_digits(image_size)
    out_dir = Path(out_dir)
    counts: dict[int, int] = {}
    for index, (image, target) in enumerate(zip(pixels, targets)):
        if limit_per_class is not None and counts.get(int(target), 0) >= limit_per_class:
            continue
        counts[int(target)] = counts.get(int(target), 0) + 1
        folder = out_dir / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"digit_{index:04d}.png")
    return out_dir


def _split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def load_folder_splits(spec: DataSpec) -> DatasetSplits:
    root = Path(spec.data).expanduser()
    train_dir = _split_dir(root, "train") if root.is_dir() else None
    exclusions = Exclusions.read(spec.exclude, root) if spec.exclude else None

    def scan_folder(folder: Path, labels: tuple[str, ...] | None = None) -> ScannedFolder:
        # the scan's one read per file also yields the hashes the split needs and the pixels the cache holds
        scan = scan_class_folders(folder, spec, labels, hashes=spec.group_duplicates, pixels=True)
        return exclusions.apply(scan) if exclusions else scan

    validation = test = None
    if train_dir is not None:
        train_scan = scan_folder(train_dir)
        labels = train_scan.labels
        val_dir, test_dir = _split_dir(root, "validation"), _split_dir(root, "test")
        train = train_scan.image_set()
        scans = {"train": train_scan}
        if val_dir is not None:
            scans["validation"] = scan_folder(val_dir, labels)
            validation = scans["validation"].image_set()
            layout = "train/validation folders"
        else:
            layout = "train folder, stratified split"
        if test_dir is not None:
            scans["test"] = scan_folder(test_dir, labels)
            test = scans["test"].image_set()
    else:
        scan = scan_folder(root)
        labels = scan.labels
        scans = {"all": scan}
        train = scan.image_set()
        layout = "class folders, stratified split"
    if len(labels) < 2:
        raise EdgekitError(f"{root}: only one class ({labels[0]}); a classifier needs at least two class folders")
    train, validation, duplicates = split_without_leaks(train, validation, test, spec)
    if exclusions:
        exclusions.warn_unmatched()
    record = DatasetRecord(
        spec=spec, source="folder", path=str(root.resolve()), n_files=sum(len(s.paths) for s in scans.values()),
        fingerprint=hashlib.sha256("".join(s.fingerprint for s in scans.values()).encode()).hexdigest(),
        skipped=tuple(SkippedFile(p, r) for s in scans.values() for p, r in s.skipped),
        split=SplitRecord(train=len(train), validation=len(validation), test=len(test) if test is not None else 0,
                          layout=layout, duplicates=duplicates),
        exclude=ExclusionRecord(**exclusions.record) if exclusions else None)
    return DatasetSplits(labels, train, validation, test, record)


def load_dataset(spec: DataSpec) -> DatasetSplits:
    """The splits a spec names, with extra (feedback) folders folded into the training split."""
    splits = load_digits_splits(spec) if spec.data is None else load_folder_splits(spec)
    extras = []
    for extra in spec.extra_data:
        scan = scan_class_folders(Path(extra).expanduser(), spec, splits.labels, pixels=splits.train.paths is not None)
        extra_set = scan.image_set()
        if splits.train.paths is None:
            extra_set = ImageSet(extra_set.labels, extra_set.targets,
                                 pixels=load_pixels(extra_set, spec.image_size).astype(np.uint8))
        splits.train = splits.train.concat(extra_set)
        extras.append(ExtraDataRecord(path=str(Path(extra).resolve()), n_files=len(scan.paths),
                                      fingerprint=scan.fingerprint,
                                      skipped=tuple(SkippedFile(p, r) for p, r in scan.skipped)))
    if extras:
        splits.record = dataclasses.replace(
            splits.record, extra_data=tuple(extras),
            split=dataclasses.replace(splits.record.split, train=len(splits.train)))
    return splits
