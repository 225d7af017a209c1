"""Tiny colour-classifier models and images for the on-device runner's tests.

The weights are set by hand, not trained, so the expected answer is known: a mostly red image is
"red", and so on. That keeps argmax decisive even after int8 quantization, which a random-weight
model would not be. Regenerate nothing: every test session builds these in a few seconds.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np

LABELS = ["red", "green", "blue"]
SIZE = 32


def _keras():
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf_keras as keras

    return tf, keras


def build_keras_model(size: int = SIZE):
    """Input → Rescaling → Conv2D(4) → GlobalAveragePooling → Dense(3) softmax, colour-sensitive weights."""
    _, keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
    x = conv(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(len(LABELS), activation="softmax")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((3, 3, 3, 4), np.float32)
    for channel in range(3):
        kernel[1, 1, channel, channel] = 1.0  # filter c passes channel c through
    kernel[:, :, :, 3] = 1.0 / 27.0  # filter 3: overall brightness
    conv.set_weights([kernel, np.zeros(4, np.float32)])
    weights = np.zeros((4, 3), np.float32)
    weights[:3, :3] = 8.0 * (np.eye(3) - 0.5)
    dense.set_weights([weights, np.zeros(3, np.float32)])
    return model


def color_images(count: int, size=(SIZE, SIZE), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` uint8 images, each dominated by one colour channel, and that channel as the label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    images = rng.integers(0, 90, size=(count, size[0], size[1], 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, :, :, label] = rng.integers(150, 256, size=size).astype(np.uint8)
    return images, labels


def convert(model, quantize: str | None = None) -> bytes:
    """Float32 .tflite, or full-integer with `quantize` ('uint8' or 'int8') input and output."""
    tf, _ = _keras()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        calibration, _ = color_images(24, seed=1)

        def representative():
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, quantize)
        converter.inference_output_type = getattr(tf, quantize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected": harmless here
        return converter.convert()


@functools.cache
def colour_tflite(quantize: str | None = None, size: int = SIZE) -> bytes:
    """`convert(build_keras_model(size), quantize)`, converted once per test session.

    A dozen modules need the plain colour model; each conversion costs about a second of CPU, and the
    bytes are immutable, so every caller shares one copy (a fresh conversion differs only in tensor names).
    """
    return convert(build_keras_model(size), quantize)


def write_variant(directory: Path, content: bytes, size: int = SIZE, labels=LABELS,
                  name: str = "model.tflite") -> Path:
    """Write a model the way `edgekit compress` leaves it: .tflite + manifest.json + labels.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(content)
    (directory / "labels.txt").write_text("\n".join(labels) + "\n")
    from edgekit import manifests

    contract = manifests.ModelContract(file=name, input_size=(size, size, 3), labels=tuple(labels))
    manifests.write(directory, manifests.VariantManifest(name=directory.name, model=contract), [name])
    return path
