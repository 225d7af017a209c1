"""Datasets (the embedded digits, image folders) and the tf.data pipelines that feed them.

Images are checked once with Pillow before any training starts, because tf.data fails mid-epoch
on the first corrupt file; bad files are skipped and listed (or fatal with `strict`).
Pixels stay raw RGB in [0, 255]: normalisation lives inside the model.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# what tf.io.decode_image reads natively; anything else is decoded by Pillow inside the pipeline
TF_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
TF_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
# without the disk cache, a split this small is kept decoded in memory (was 2 GiB: the 4.9 GB peak)
MEMORY_CACHE_BYTES = 512 << 20
SHUFFLE_BYTES = 512 << 20  # the training shuffle buffer's cap, so memory does not grow with the dataset


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


@dataclass(frozen=True)
class DataSpec:
    """How to (re)load a dataset: the same spec always yields the same splits."""

    data: str | None = None
    extra_data: tuple[str, ...] = ()
    image_size: int = 32
    seed: int = 42
    validation_fraction: float = 0.2
    strict: bool = False
    max_image_pixels: int = 40_000_000
    exclude: str | None = None  # an exclusion list (`edgekit data check --write-exclusions`)
    group_duplicates: bool = True  # False: the plain stratified split of runs made before duplicate groups


# ---------------------------------------------------------------- embedded digits


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
    description = {
        "source": "digits",
        "origin": f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
        "n_images": int(len(targets)),
        "fingerprint": hashlib.sha256(pixels.tobytes()).hexdigest(),
        "split": {"validation_fraction": spec.validation_fraction, "seed": spec.seed,
                  "train": int(len(train_idx)), "validation": int(len(val_idx))},
    }
    return DatasetSplits(labels, full.subset(train_idx), full.subset(val_idx), None, description)


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


# ---------------------------------------------------------------- image folders


class BadImage(Exception):
    """Why one file cannot be used as an image."""


def inspect_image(path: Path, max_pixels: int) -> bool:
    """Read `path`'s header with Pillow; return whether tf.io decodes it natively. Raise BadImage otherwise.

    Only the header: `_check` then decodes the file with the training decoder itself, because a full
    Pillow decode accepts files (a PNG with a bad CRC) that TensorFlow's decoder refuses mid-epoch.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise BadImage(f"{width}x{height} is over the {max_pixels:,}-pixel limit for safe decoding")
                if width < 1 or height < 1:
                    raise BadImage("has no pixels")
                upright = image.getexif().get(0x0112, 1) in (0, 1)  # tf.io ignores EXIF orientation
                return image.format in TF_FORMATS and image.mode in TF_MODES and upright
    except Image.DecompressionBombError:
        raise BadImage(f"is over the {max_pixels:,}-pixel limit for safe decoding") from None
    except UnidentifiedImageError:
        raise BadImage("is not a recognised image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"cannot be decoded ({str(exc).splitlines()[0][:100] if str(exc) else 'corrupt'})") \
            from None


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass
class ScannedFolder:
    labels: tuple[str, ...]
    paths: list[str]
    targets: list[int]
    tf_decodable: list[bool]
    skipped: list[tuple[str, str]]
    fingerprint: str


def scan_class_folders(root: Path, spec: DataSpec, labels: tuple[str, ...] | None = None,
                       use_cache: bool | None = None) -> ScannedFolder:
    """Find and check every image under `root/<class>/`. `labels` fixes the class list and order."""
    from edgekit.datascan import scan_folder

    return scan_folder(root, spec, labels, use_cache)


def _fingerprint(root: Path, paths: list[str]) -> str:
    """A hash of the file list (relative path and size): changes when files are added, removed or edited."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{Path(path).relative_to(root)}\t{Path(path).stat().st_size}\n".encode())
    return digest.hexdigest()


def _folder_set(scan: ScannedFolder) -> ImageSet:
    return ImageSet(scan.labels, np.asarray(scan.targets, dtype=np.int32), tuple(scan.paths),
                    tuple(scan.tf_decodable))


def _split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def load_folder_splits(spec: DataSpec) -> DatasetSplits:
    from edgekit.datacheck.exclude import Exclusions
    from edgekit.datacheck.split import split_without_leaks

    root = Path(spec.data).expanduser()
    train_dir = _split_dir(root, "train") if root.is_dir() else None
    description: dict = {"source": "folder", "path": str(root.resolve())}
    exclusions = Exclusions.read(spec.exclude, root) if spec.exclude else None

    def scan_folder(folder: Path, labels: tuple[str, ...] | None = None) -> ScannedFolder:
        scan = scan_class_folders(folder, spec, labels)
        return exclusions.apply(scan) if exclusions else scan

    validation = test = None
    if train_dir is not None:
        train_scan = scan_folder(train_dir)
        labels = train_scan.labels
        val_dir, test_dir = _split_dir(root, "validation"), _split_dir(root, "test")
        train = _folder_set(train_scan)
        scans = {"train": train_scan}
        if val_dir is not None:
            scans["validation"] = scan_folder(val_dir, labels)
            validation = _folder_set(scans["validation"])
            split = {"layout": "train/validation folders"}
        else:
            split = {"layout": "train folder, stratified split", "validation_fraction":
                     spec.validation_fraction, "seed": spec.seed}
        if test_dir is not None:
            scans["test"] = scan_folder(test_dir, labels)
            test = _folder_set(scans["test"])
    else:
        scan = scan_folder(root)
        labels = scan.labels
        scans = {"all": scan}
        train = _folder_set(scan)
        split = {"layout": "class folders, stratified split", "validation_fraction": spec.validation_fraction,
                 "seed": spec.seed}
    if len(labels) < 2:
        raise EdgekitError(f"{root}: only one class ({labels[0]}); a classifier needs at least two class folders")
    train, validation, duplicates = split_without_leaks(train, validation, test, spec)
    if duplicates is not None:
        split["duplicates"] = duplicates
    split.update(train=len(train), validation=len(validation), test=len(test) if test is not None else 0)
    description.update(
        n_files=sum(len(s.paths) for s in scans.values()),
        fingerprint=hashlib.sha256("".join(s.fingerprint for s in scans.values()).encode()).hexdigest(),
        skipped=[{"path": p, "reason": r} for s in scans.values() for p, r in s.skipped],
        split=split,
    )
    if exclusions:
        exclusions.warn_unmatched()
        description["exclude"] = exclusions.record
    return DatasetSplits(labels, train, validation, test, description)


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split; every class with two or more images gets at least one validation image."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        rng.shuffle(members)
        n_val = 0 if len(members) < 2 else min(len(members) - 1, max(1, round(fraction * len(members))))
        val_idx.extend(members[:n_val])
        train_idx.extend(members[n_val:])
    return np.sort(np.asarray(train_idx, dtype=np.int64)), np.sort(np.asarray(val_idx, dtype=np.int64))


def load_dataset(spec: DataSpec) -> DatasetSplits:
    """The splits a spec names, with extra (feedback) folders folded into the training split."""
    splits = load_digits_splits(spec) if spec.data is None else load_folder_splits(spec)
    extras = []
    for extra in spec.extra_data:
        scan = scan_class_folders(Path(extra).expanduser(), spec, splits.labels)
        extra_set = _folder_set(scan)
        if splits.train.paths is None:
            extra_set = ImageSet(extra_set.labels, extra_set.targets,
                                 pixels=load_pixels(extra_set, spec.image_size).astype(np.uint8))
        splits.train = splits.train.concat(extra_set)
        extras.append({"path": str(Path(extra).resolve()), "n_files": len(scan.paths),
                       "fingerprint": scan.fingerprint,
                       "skipped": [{"path": p, "reason": r} for p, r in scan.skipped]})
    if extras:
        splits.description["extra_data"] = extras
        splits.description["split"]["train"] = len(splits.train)
    return splits


def spec_from_description(description: dict, image_size: int) -> DataSpec:
    """Rebuild the DataSpec a run was trained with from its manifest's dataset record."""
    split = description.get("split", {})
    return DataSpec(
        data=description.get("path") if description.get("source") == "folder" else None,
        extra_data=tuple(e["path"] for e in description.get("extra_data", [])),
        image_size=image_size,
        seed=split.get("seed", 42),
        validation_fraction=split.get("validation_fraction", 0.2),
        exclude=description.get("exclude", {}).get("path"),
        group_duplicates="duplicates" in split,
    )


# ---------------------------------------------------------------- tf.data pipelines


def _device_decode():
    """The device runner's own decode_image: training's Pillow path runs the very code the device runs."""
    from edgekit.devices import runner_module

    return runner_module().decode_image


def _pil_decode(path: bytes, image_size) -> np.ndarray:
    """EXIF-rotated, 16-bit, webp... images: decoded (and JPEG-draft-scaled) as the device runner does."""
    size = int(image_size)
    with open(path.decode(), "rb") as handle:
        pixels, _ = _device_decode()(handle.read(), 2**62, (size, size))
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def _jpeg_ratio(raw, image_size: int):
    """tf.io.decode_jpeg at the DCT scale the device picks (edgekit_runner.jpeg_draft_scale): 8, 4, 2 or 1."""
    from edgekit.compat import tf

    shape = tf.io.extract_jpeg_shape(raw)
    ratio = tf.minimum(shape[0] // image_size, shape[1] // image_size)
    branches = [(tf.greater_equal(ratio, scale), functools.partial(_decode_jpeg, raw, scale))
                for scale in (8, 4, 2)]
    return tf.case(branches, default=functools.partial(_decode_jpeg, raw, 1), exclusive=False)


def _decode_jpeg(raw, ratio: int):
    from edgekit.compat import tf

    # the accurate DCT is what Pillow (and so the device runner) uses; TF's default fast one
    # differs by a few grey levels on most pixels of a camera JPEG
    return tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE", ratio=ratio)


def _decode_fn(image_size: int):
    from edgekit.compat import tf

    def decode(path, tf_ok):
        def with_tf():
            raw = tf.io.read_file(path)
            return tf.cond(
                tf.io.is_jpeg(raw),
                lambda: _jpeg_ratio(raw, image_size),
                lambda: tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8),
            )

        def with_pillow():
            image = tf.numpy_function(_pil_decode, [path, image_size], tf.uint8, stateful=False)
            return tf.ensure_shape(image, [None, None, 3])

        image = tf.cond(tf_ok, with_tf, with_pillow)
        image = tf.image.resize(image, [image_size, image_size], method="bilinear")
        return tf.ensure_shape(image, [image_size, image_size, 3])

    return decode


def make_pipeline(images: ImageSet, image_size: int, batch_size: int, *, training: bool = False,
                  augment=None, seed: int = 0, cache: bool = True, drop_remainder: bool = False):
    """tf.data: decoded pixels (from the disk cache, built on first use) → shuffle → batch → augment → prefetch.

    Nothing here holds more than a bounded number of images in memory: the disk cache is read shard
    by shard and the shuffle buffer is capped in bytes (SHUFFLE_BYTES), whatever the dataset size.
    """
    from edgekit.compat import tf

    autotune = tf.data.AUTOTUNE
    labels = tf.constant(images.targets, dtype=tf.int32)
    image_bytes = image_size * image_size * 3 * 4
    shuffle_pixels = training
    if images.pixels is not None:
        pixels = images.pixels
        if pixels.shape[1] != image_size:
            pixels = tf.image.resize(pixels, [image_size, image_size], method="bilinear").numpy()
        ds = tf.data.Dataset.from_tensor_slices((tf.cast(pixels, tf.float32), labels))
    elif (cached := _disk_cache(images, image_size) if cache else None) is not None:
        ds = cached.dataset(images.targets, training=training, seed=seed)
    else:
        in_memory = cache and len(images) * image_bytes <= MEMORY_CACHE_BYTES
        decode = _decode_fn(image_size)
        ds = tf.data.Dataset.from_tensor_slices((list(images.paths), list(images.tf_decodable), labels))
        if training and not in_memory:  # shuffling paths is free and complete; pixels need a buffer
            ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
            shuffle_pixels = False
        ds = ds.map(lambda p, ok, y: (decode(p, ok), y), num_parallel_calls=autotune, deterministic=True)
        if in_memory:
            ds = ds.cache()
    if shuffle_pixels:
        ds = ds.shuffle(max(1, min(len(images), 10_000, max(batch_size, SHUFFLE_BYTES // image_bytes))), seed=seed,
                        reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if training and augment is not None and augment.enabled:
        from edgekit.augment import augment_batch

        ds = ds.map(lambda x, y: (augment_batch(x, augment, seed), y), num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def _disk_cache(images: ImageSet, image_size: int):
    """The decode-once cache entry for these files (None when off or unwritable)."""
    from edgekit import datacache

    def decoded_batches():
        for x, _ in make_pipeline(images, image_size, 64, cache=False):
            yield x.numpy()

    return datacache.open_or_build(list(images.paths), list(images.tf_decodable), image_size, decoded_batches)


def iter_pixel_batches(images: ImageSet, image_size: int, batch_size: int = 128):
    """(float32 pixels, int32 targets) batches in dataset order, from the decode-once cache.

    What evaluation, compression and bench iterate instead of one array the size of the dataset.
    """
    for x, y in make_pipeline(images, image_size, batch_size):
        yield x.numpy(), y.numpy()


def load_pixels(images: ImageSet, image_size: int, batch_size: int = 256) -> np.ndarray:
    """Every image decoded and resized exactly as the pipeline does, as one float32 array."""
    batches = [x.numpy() for x, _ in make_pipeline(images, image_size, batch_size, cache=False)]
    return np.concatenate(batches) if batches else np.zeros((0, image_size, image_size, 3), np.float32)


def calibration_images(images: ImageSet, image_size: int, count: int, seed: int) -> np.ndarray:
    """A seeded, class-balanced sample of training images for int8 calibration."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    by_class: dict[int, list[int]] = {}
    for index in order:
        by_class.setdefault(int(images.targets[index]), []).append(int(index))
    picked: list[int] = []
    while len(picked) < min(count, len(images)):
        for members in by_class.values():
            if members and len(picked) < count:
                picked.append(members.pop())
    return load_pixels(images.subset(np.asarray(sorted(picked))), image_size)
