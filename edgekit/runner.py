"""The on-device runner imported as a module: edgekit's one implementation of model I/O.

`resources/devices/edgekit_runner.py` is deployed as one self-contained file beside every model; the host
imports that same file here for everything about feeding a `.tflite`: interpreter choice and loading (with
the child-process probe that keeps a damaged file from crashing tf.lite in this process), pixel range,
normalisation, quantize and dequantize, standard metadata, image decoding, the image extensions and the
native stderr filter. `edgekit eval` then feeds a model exactly as a device does because it runs the same
code, not because tests hold two copies together. The runner raises its own `RunnerError`; the loaders
here turn it into `EdgekitError`, which the CLI prints as one line. Importing changes no global state.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.tflite import Quantization

PATH = Path(__file__).resolve().parent / "resources" / "devices" / "edgekit_runner.py"
MODULE_NAME = "edgekit_runner"  # its name on a device, where it runs as a script


def _load():
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    if not PATH.is_file():
        raise EdgekitError(f"{PATH}: the on-device runner is missing from the installation; reinstall edgekit")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE_NAME]
        raise
    return module


module = _load()

IMAGE_EXTENSIONS = module.IMAGE_EXTENSIONS
RunnerError, ImageError, ImageTooLarge = module.RunnerError, module.ImageError, module.ImageTooLarge
Model, RawModel = module.Model, module.RawModel
decode_image, resize_bilinear, dequantize = module.decode_image, module.resize_bilinear, module.dequantize
is_noise, native_stderr_filtered = module.is_noise, module.native_stderr_filtered


@contextlib.contextmanager
def edgekit_errors() -> Iterator[None]:
    """The runner's one-line errors as EdgekitError, so callers and the CLI handle them as edgekit's own."""
    try:
        yield
    except RunnerError as exc:
        raise EdgekitError(str(exc)) from None


def load_model(path: Path, *, threads: int | None = None, runtime: str | None = None, raw: bool = False):
    """The runner's `Model` (an RGB image classifier fed float pixels 0..255) or, with `raw`, its `RawModel`
    (any .tflite fed raw tensors). The first of LiteRT, tflite_runtime, tf.lite is used unless `runtime`
    names one; a file goes to an interpreter that could crash on it only after a child process loaded it."""
    with edgekit_errors():
        return (RawModel if raw else Model)(str(path), threads, None, runtime)


def read_metadata(content: bytes, label: str) -> dict:
    """The model's standard TFLite metadata as the runner reads it ({} when it has none); EdgekitError when
    it is present but unreadable."""
    with edgekit_errors():
        return module.read_standard_metadata(content, label)


def dequantizer(tensor: dict):
    """raw → float32 real values for a tensor described as `tflite.Tensor.as_dict()` does (the runner's
    dequantize; per-channel parameters use the first channel's, as an output tensor has one)."""
    quant = Quantization.from_dict(tensor.get("quantization"))
    dtype = tensor.get("dtype") if tensor.get("dtype") in ("int8", "uint8", "int16") else "float32"
    detail = {"dtype": dtype, "quantization": quant.per_tensor if quant else (0.0, 0)}
    return lambda raw: dequantize(raw, detail)
