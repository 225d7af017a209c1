"""Three .tflite models edgekit did not make, built here because tests and benchmarks cannot download any.

They stand for what users bring to `edgekit bench` and `edgekit info`: a two-input functional model
(like a landmark model taking an image and a flag), a small conv net with int8 input and output (a
fully quantized detector or wake-word model) and a non-image dense model. None has an edgekit manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compat import keras, tf


def two_input_model() -> keras.Model:
    """An image [1, 96, 96, 3] and a feature vector [1, 8] merged into 4 outputs."""
    keras.utils.set_random_seed(1)
    image = keras.Input((96, 96, 3), batch_size=1, name="image")
    extra = keras.Input((8,), batch_size=1, name="features")
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(image)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(extra)])
    return keras.Model([image, extra], keras.layers.Dense(4)(x))


def int8_conv_model() -> keras.Model:
    """A small conv net on [1, 96, 96, 1] with a 6-way output; converted with int8 input and output."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((96, 96, 1), batch_size=1)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(64, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(x))


def dense_model() -> keras.Model:
    """A non-image model: 40 features in (an audio embedding, a sensor window), 12 scores out."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((40,), batch_size=1)
    x = keras.layers.Dense(512, activation="relu")(inputs)
    x = keras.layers.Dense(512, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(12)(x))


def _representative(model: keras.Model):
    rng = np.random.default_rng(0)

    def samples():
        for _ in range(16):
            yield [rng.uniform(0, 1, [int(d) for d in t.shape]).astype(np.float32) for t in model.inputs]

    return samples


def convert(model: keras.Model, out: Path, int8_io: bool = False) -> Path:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8_io:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    out.write_bytes(converter.convert())
    return out


def build_all(directory: Path) -> dict[str, Path]:
    """The three models as .tflite files in `directory` (about 10 s of conversion on 2 cores)."""
    directory.mkdir(parents=True, exist_ok=True)
    return {"two-input": convert(two_input_model(), directory / "two_input.tflite"),
            "int8-conv": convert(int8_conv_model(), directory / "int8_conv.tflite", int8_io=True),
            "dense": convert(dense_model(), directory / "dense.tflite")}


def stateful_model(out: Path) -> Path:
    """A streaming model with a variable: each output is 0.5 x the previous state + the input (as a wake-word
    model keeps its audio history), so the same input gives different outputs depending on what came before."""

    class Streaming(tf.Module):
        def __init__(self):
            super().__init__()
            self.state = tf.Variable(tf.zeros([1, 4]))

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            self.state.assign(self.state * 0.5 + x)
            return self.state * 1.0

    module = Streaming()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    out.write_bytes(converter.convert())
    return out
