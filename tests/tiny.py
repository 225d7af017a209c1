"""Tiny classifiers and datasets for tests: alpha 0.35 MobileNetV2 at 32 px on coloured-noise images.

Each class is a base colour under heavy pixel noise, so the task is random-looking but learnable in a
few epochs from scratch. Pixels are raw 0..255 floats, as the classifier expects.
"""

from __future__ import annotations

import numpy as np

from edgekit.compat import keras, tf
from edgekit.model import ModelSpec, build_classifier

PALETTE = np.array(
    [[220, 40, 40], [40, 200, 60], [50, 60, 230], [230, 220, 40], [200, 40, 200],
     [40, 210, 210], [250, 140, 30], [120, 120, 120], [20, 20, 20], [240, 240, 240]],
    dtype=np.float32,
)


def tiny_spec(num_classes: int = 3, image_size: int = 32) -> ModelSpec:
    if not 2 <= num_classes <= len(PALETTE):
        raise ValueError(f"num_classes must be in 2..{len(PALETTE)}")
    return ModelSpec(num_classes=num_classes, image_size=image_size, alpha=0.35, dropout=0.0)


def tiny_classifier(num_classes: int = 3, image_size: int = 32, seed: int = 0) -> keras.Model:
    """An untrained flat classifier (about 0.4 M parameters), the same on every call with the same seed."""
    keras.utils.set_random_seed(seed)
    return build_classifier(tiny_spec(num_classes, image_size))


def tiny_images(count: int, num_classes: int = 3, image_size: int = 32, seed: int = 0, noise: float = 30.0):
    """`(images, labels)`: float32 pixels in 0..255 of shape (count, size, size, 3) and int32 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, count).astype(np.int32)
    images = PALETTE[labels][:, None, None, :] + rng.normal(0.0, noise, (count, image_size, image_size, 3))
    return np.clip(images, 0, 255).astype(np.float32), labels


def tiny_datasets(num_classes: int = 3, image_size: int = 32, train: int = 192, val: int = 64,
                  batch_size: int = 16, seed: int = 0):
    """`(train_ds, val_ds)`: batched tf.data datasets of (pixels, label) with known cardinality."""
    x, y = tiny_images(train, num_classes, image_size, seed=seed)
    xv, yv = tiny_images(val, num_classes, image_size, seed=seed + 1)
    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(train, seed=seed).batch(batch_size)
    val_ds = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(batch_size)
    return train_ds, val_ds


def trained_tiny_classifier(num_classes: int = 3, image_size: int = 32, epochs: int = 6, seed: int = 0):
    """A tiny classifier fitted on `tiny_datasets` (val accuracy ~0.9+; about 30 s on 2 cores)."""
    model = tiny_classifier(num_classes, image_size, seed)
    train_ds, val_ds = tiny_datasets(num_classes, image_size, seed=seed)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(), ["accuracy"])
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0)
    return model
