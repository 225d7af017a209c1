"""The tf.data pipelines that feed images to training, evaluation and calibration.

Pixels stay raw RGB in [0, 255]: normalisation lives inside the model. File datasets are read from the
pixel cache (decoded once); without it, each pass decodes with `decode.decode_fn`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.augment import augment_batch
from edgekit.data import decode, pixelcache
from edgekit.data.decode import decode_fn
from edgekit.data.types import ImageSet

# without the disk cache, a split this small is kept decoded in memory (was 2 GiB: the 4.9 GB peak)
MEMORY_CACHE_BYTES = 512 << 20
SHUFFLE_BYTES = 512 << 20  # the training shuffle buffer's cap, so memory does not grow with the dataset


def pixel_sources() -> list[Path]:
    """The source files whose code produces the cached pixels: this module (the cache is filled from the
    uncached pipeline below), the decoder and the device runner whose decode the Pillow path runs."""
    return [Path(__file__), *decode.pixel_sources()]


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
        decode = decode_fn(image_size)
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
        ds = ds.map(lambda x, y: (augment_batch(x, augment, seed), y), num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def _disk_cache(images: ImageSet, image_size: int):
    """The decode-once cache entry for these files (None when off or unwritable), filled from the pixels the
    scan kept when it decoded every file of this run already, else by decoding them."""
    def decoded_batches():
        for x, _ in make_pipeline(images, image_size, 64, cache=False):
            yield x.numpy()

    paths, tf_ok = list(images.paths), list(images.tf_decodable)
    # a first run: the scan decoded these files already, with this very decode, and kept the pixels
    staged = pixelcache.staged_batches(paths, tf_ok, image_size, decode.pixel_sources())
    return pixelcache.open_or_build(paths, tf_ok, image_size, staged or decoded_batches, pixel_sources())


def iter_pixel_batches(images: ImageSet, image_size: int, batch_size: int = 128):
    """(float32 pixels, int32 targets) batches in dataset order, from the decode-once cache.

    What evaluation, compression and bench iterate instead of one array the size of the dataset.
    """
    from edgekit.compat import tf

    try:
        for x, y in make_pipeline(images, image_size, batch_size):
            yield x.numpy(), y.numpy()
    except tf.errors.OpError as exc:
        line = pixelcache.damage_line(exc)
        if line is None:
            raise
        raise pixelcache.DamagedShard(line) from None


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
