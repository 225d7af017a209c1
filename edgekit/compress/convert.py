"""Keras model → TFLite bytes (float32, float16, dynamic-range or full-integer int8), and what is inside them.

The converter is fed a concrete function with a static [1, H, W, 3] input rather than the Keras
model: `from_keras_model` first exports a Keras SavedModel, which on two cores costs 15-50 s per
call, while the frozen-function path converts the same graph to the same ops in 2-5 s. Batch 1 is
also what the Edge TPU compiler needs (it rejects dynamic shapes); hosts can still resize the input.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings

import numpy as np

from edgekit.compat import keras, tf
from edgekit.compress.finetune import check_params
from edgekit.compress.params import ConvertParams
from edgekit.errors import EdgekitError
from edgekit.tflite import parse

# Ops that may touch float tensors in an int8 model: the boundary converters for float32 input/output.
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


@contextlib.contextmanager
def _quiet():
    """Send the converter's C++ chatter (written straight to fds 1 and 2) and warnings to a scratch file."""
    with tempfile.TemporaryFile() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = (os.dup(1), os.dup(2))
        except (OSError, ValueError):  # no real file descriptors (embedded interpreters): stay noisy
            yield
            return
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _input_shape(model: keras.Model) -> tuple[int, int, int]:
    if len(model.inputs) != 1:
        raise EdgekitError(
            f"convert: model {model.name!r} has {len(model.inputs)} inputs; edgekit expects one image"
        )
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or any(d is None for d in shape):
        raise EdgekitError(f"convert: model input shape {shape} is not a fixed (height, width, channels)")
    return shape


def _calibration_set(images: np.ndarray | None, params: ConvertParams, shape: tuple[int, ...]) -> np.ndarray:
    if images is None or len(images) == 0 or params.calibration_samples == 0:
        raise EdgekitError(
            "int8 needs calibration images: pass representative training images (raw 0..255 pixels) and "
            "calibration_samples >= 1, or add a qat stage first, or use mode float16 or dynamic"
        )
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise EdgekitError(
            f"convert: calibration images have shape {tuple(images.shape)} but the model takes "
            f"(N, {', '.join(map(str, shape))}); pass images at the model's input size"
        )
    images = images[: params.calibration_samples].astype(np.float32)
    if float(images.max()) <= 1.0:
        raise EdgekitError(
            "convert: calibration images look normalised (all values <= 1); pass raw 0..255 pixels, "
            "the model rescales them itself"
        )
    return images


def _converter(model: keras.Model, shape: tuple[int, int, int]):
    name = model.inputs[0].name.split(":")[0] or "image"
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1, *shape), tf.float32, name=name))
    # No trackable object on purpose: with one the converter re-exports a SavedModel (the slow path).
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete])


def _configure(converter, params: ConvertParams, calibration: np.ndarray | None, qat: bool) -> None:
    if params.mode == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if params.mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if params.mode != "int8":
        return
    if not qat:

        def representative_dataset():
            for image in calibration:
                yield [image[np.newaxis]]

        converter.representative_dataset = representative_dataset
        # With a QAT model this would trip a TF 2.21 check that wants a representative dataset even
        # though the ranges are already in the graph; `_check_integer_only` catches float fallbacks.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if params.io_dtype != "float32":
        io = {"int8": tf.int8, "uint8": tf.uint8}[params.io_dtype]
        converter.inference_input_type = io
        converter.inference_output_type = io


def convert(
    model: keras.Model, params: ConvertParams, representative_images: np.ndarray | None = None
) -> bytes:
    """The .tflite bytes for `model` under `params`.

    `representative_images` are raw training pixels (N, H, W, 3) for int8 calibration; a QAT model
    already carries its ranges and ignores them.
    """
    from edgekit.compress.qat import is_qat_model

    check_params("convert", params)
    shape = _input_shape(model)
    qat = is_qat_model(model)
    if qat and params.mode != "int8":
        raise EdgekitError(
            f"convert: a quantization-aware model converts only to int8, not {params.mode}; "
            "use mode int8 or drop the qat stage"
        )
    calibration = None
    if params.mode == "int8" and not qat:
        calibration = _calibration_set(representative_images, params, shape)
    converter = _converter(model, shape)
    _configure(converter, params, calibration, qat)
    try:
        with _quiet():
            content = converter.convert()
    except Exception as exc:  # noqa: BLE001 - ConverterError is not exported by tf.lite
        if not isinstance(exc, (ValueError, RuntimeError)) and type(exc).__name__ != "ConverterError":
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "error:" in line), lines[0] if lines else type(exc).__name__)
        raise EdgekitError(f"convert: TFLite {params.mode} conversion failed: {reason[:240]}") from None
    if params.mode == "int8":
        _check_integer_only(content)
    return bytes(content)


def _check_integer_only(content: bytes) -> None:

    floats = parse(content, "converted int8 model").float_ops(ignore=BOUNDARY_OPS)
    if floats:
        raise EdgekitError(
            f"convert: the int8 model still computes {', '.join(floats)} in float; those layers cannot be "
            "fully quantized, so remove them or use mode dynamic"
        )
