"""The generated JPEG folder and the two input pipelines that read it (edgekit's tf.data and Keras's
ImageDataGenerator), built from one augmentation config; used by input_pipeline.py and
train_throughput.py.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
from _common import WORK

from edgekit.compat import keras
from edgekit.config import AugmentConfig
from edgekit.data import DataSpec, load_dataset, make_pipeline

BATCH = 32
SOURCE_SIZE = 256
# Contrast is off because ImageDataGenerator has no contrast transform; the rest is edgekit's default.
AUGMENT = AugmentConfig(flip=True, rotation=0.05, zoom=0.1, translation=0.1, contrast=0.0)


def jpeg_folder(count: int) -> Path:
    """`count` 256x256 JPEGs in ten class folders: the embedded digits, coloured, upscaled, noisy.

    Made once into benchmarks/work/ (gitignored); a marker file says the folder is complete.
    """
    from PIL import Image

    from edgekit.data import render_digits

    root = WORK / f"digits-jpeg-{count}"
    if (root / ".complete").exists():
        return root
    pixels, targets = render_digits(SOURCE_SIZE)
    rng = np.random.default_rng(0)
    for index in range(count):
        source = index % len(pixels)
        ink = pixels[source, ..., :1].astype(np.float32) / 255.0
        background, foreground = rng.uniform(0, 255, (2, 1, 1, 3))
        image = background + (foreground - background) * ink + rng.normal(0, 12, ink.shape[:2] + (3,))
        folder = root / str(int(targets[source]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{index:05d}.jpg", quality=90)
    (root / ".complete").write_text(f"{count}\n")
    return root


def edgekit_images(folder: Path, image_size: int):
    """Every image in the folder as one ImageSet (train + validation), so both sides read the same files."""
    splits = load_dataset(DataSpec(data=str(folder), image_size=image_size))
    return splits.train.concat(splits.validation)


def edgekit_pipeline(images, image_size: int, augment: AugmentConfig = AUGMENT):
    return make_pipeline(images, image_size, BATCH, training=True, augment=augment, seed=0)


def idg_kwargs(augment: AugmentConfig) -> dict:
    """The ImageDataGenerator arguments closest to an AugmentConfig (Keras rotation is a fraction of 2*pi)."""
    if not augment.enabled:
        return {}
    return {"horizontal_flip": augment.flip, "rotation_range": augment.rotation * 360.0,
            "zoom_range": augment.zoom, "width_shift_range": augment.translation,
            "height_shift_range": augment.translation, "fill_mode": "nearest"}


def idg_flow(folder: Path, image_size: int, augment: AugmentConfig = AUGMENT, interpolation: str = "bilinear"):
    """The tutorial pipeline: ImageDataGenerator(...).flow_from_directory, raw [0, 255] pixels like edgekit."""
    generator = keras.preprocessing.image.ImageDataGenerator(**idg_kwargs(augment))
    with contextlib.redirect_stdout(sys.stderr):  # its "Found N images" line is not a result
        return generator.flow_from_directory(str(folder), target_size=(image_size, image_size), batch_size=BATCH,
                                             class_mode="sparse", shuffle=True, seed=0, interpolation=interpolation)
