"""usage: python3 edgekit_runner.py [-h] {classify,serve,feedback,bench,doctor} ...

The on-device half of edgekit: classify images with a .tflite model, serve it over HTTP, record
corrections, benchmark it and report what the device can run. It is one file that imports nothing
from edgekit, so `edgekit deploy` can copy it beside a model onto a Raspberry Pi or Coral board; it
needs Python 3.9+, numpy, Pillow and one TFLite interpreter (ai-edge-litert, tflite-runtime or
tensorflow, tried in that order).

  python3 edgekit_runner.py classify model.tflite photos/ --top-k 3
  python3 edgekit_runner.py serve model.tflite --port 8080
  python3 edgekit_runner.py feedback 3f2a0c9e5b7d4e1f8a6b2c4d9e0f1a2b cat --db edgekit_runner.db
  python3 edgekit_runner.py bench model.tflite --images photos/ --json
  python3 edgekit_runner.py doctor

Preprocessing matches edgekit's TensorFlow pipeline: Pillow decodes the first frame (EXIF orientation is
ignored, as tf.io does; JPEGs with the accurate integer DCT, equal to tf.io.decode_jpeg with
dct_method="INTEGER_ACCURATE"), converts to RGB, and a numpy bilinear resize equal to
`tf.image.resize(method="bilinear", antialias=False)` squashes it to the model's input size. Integer
inputs get round(x / scale + zero_point), numpy's round-half-even, as edgekit's evaluation does. Input
size comes from the model; `manifest.json` beside it supplies pixel range and labels, cross-checked.

Every prediction is logged in SQLite (`edgekit_runner.db` beside the model, or $EDGEKIT_RUNNER_DB, or
--db), in WAL mode with synchronous=FULL so a row survives a kill right after it is written.
Low-confidence inputs are kept under `samples/` beside the database, within a disk budget, so
`edgekit feedback` can turn corrections into training data. Schema (schema_version 1):

  meta(key TEXT PRIMARY KEY, value)          -- 'schema_version', 'dropped_samples' (evicted or unsaved)
  models(sha256 TEXT PRIMARY KEY, path TEXT, labels TEXT /* JSON list */, first_seen TEXT)
  predictions(id TEXT PRIMARY KEY /* uuid4 hex */, time TEXT /* UTC ISO 8601 */, model_sha256 TEXT,
              source TEXT /* image path or 'http' */, top_k TEXT /* JSON [{label, index, score}] */,
              latency TEXT /* JSON {preprocess, invoke, postprocess} in ms */,
              image_path TEXT /* sample file relative to the database, NULL if not kept */,
              image_bytes INTEGER)
  feedback(id INTEGER PRIMARY KEY AUTOINCREMENT, prediction_id TEXT REFERENCES predictions(id),
           label TEXT, time TEXT, source TEXT /* 'cli' or 'http' */)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import hmac
import io
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import deque, namedtuple
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import numpy as np
except ImportError:  # `doctor` must still run on a device where nothing is installed yet
    np = None

SCHEMA_VERSION = 1
RUNNER_VERSION = "1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SAMPLE_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}
RUNTIMES = ("litert", "tflite_runtime", "tf.lite")
INSTALL = {
    "litert": "pip install ai-edge-litert",
    "tflite_runtime": 'pip install tflite-runtime "numpy<2"',
    "tf.lite": "pip install tensorflow",
    "numpy": "pip install numpy",
    "pillow": "pip install pillow",
    "edgetpu": "sudo apt-get install libedgetpu1-std (Coral apt repository: https://coral.ai/software/)",
}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PROBE_REFUSED = 3  # _probe exit code: a Python error, which the parent may report as it is
SAMPLE_OUTPUTS = 8
OUTPUT_SAMPLE_VALUES = 4096  # raw output values kept per sample in a bench report

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE IF NOT EXISTS models (sha256 TEXT PRIMARY KEY, path TEXT, labels TEXT NOT NULL, "
    "first_seen TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS predictions (id TEXT PRIMARY KEY, time TEXT NOT NULL, "
    "model_sha256 TEXT NOT NULL, source TEXT NOT NULL, top_k TEXT NOT NULL, latency TEXT NOT NULL, "
    "image_path TEXT, image_bytes INTEGER)",
    "CREATE INDEX IF NOT EXISTS predictions_samples ON predictions (time) WHERE image_path IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "prediction_id TEXT NOT NULL REFERENCES predictions (id), label TEXT NOT NULL, time TEXT NOT NULL, "
    "source TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS feedback_prediction ON feedback (prediction_id)",
    f"INSERT OR IGNORE INTO meta VALUES ('schema_version', {SCHEMA_VERSION})",
    "INSERT OR IGNORE INTO meta VALUES ('dropped_samples', 0)",
)


class RunnerError(Exception):
    """A user mistake or a missing piece of the device: printed as one line, exit code 1."""


class ImageError(RunnerError):
    """An input that is not a usable image; a directory scan skips it, the server answers 400."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit; the server answers 413."""


class UnknownPrediction(RunnerError):
    """Feedback for an id the log does not hold; the server answers 404."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def last_error(stderr: str) -> str | None:
    """Our own error line in a child's stderr, which TensorFlow may have filled with log noise."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("edgekit_runner: error: "):
            return line[len("edgekit_runner: error: "):]
    return None


def warn(message: str) -> None:
    print(f"edgekit_runner: warning: {message}", file=sys.stderr, flush=True)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def require_numpy() -> None:
    if np is None:
        raise RunnerError(f"numpy is not installed for {sys.executable}: {INSTALL['numpy']}")


def require_pillow() -> None:
    try:
        from PIL import Image
    except ImportError:
        raise RunnerError(f"Pillow is not installed for {sys.executable}: {INSTALL['pillow']}") from None
    Image.init()  # loads every format plugin now, or the first image's latency would include ~50 ms of it


# ---------------------------------------------------------------------------------------------------
# Interpreters and model loading

Runtime = namedtuple("Runtime", "name version interpreter load_delegate")


def import_runtime(name: str) -> Runtime:
    """Import one interpreter package; raises whatever a missing or broken install raises."""
    if name == "litert":
        import ai_edge_litert
        from ai_edge_litert import interpreter as module

        return Runtime(name, getattr(ai_edge_litert, "__version__", "?"), module.Interpreter,
                       module.load_delegate)
    if name == "tflite_runtime":
        import tflite_runtime
        from tflite_runtime import interpreter as module

        return Runtime(name, tflite_runtime.__version__, module.Interpreter, module.load_delegate)
    if name == "tf.lite":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        return Runtime(name, tf.__version__, tf.lite.Interpreter, tf.lite.experimental.load_delegate)
    raise RunnerError(f"--runtime {name}: unknown; choose one of {', '.join(RUNTIMES)}")


def choose_runtime(requested: str | None) -> str:
    """The runtime to use. TensorFlow is found without importing it: it is slow and the last resort."""
    import importlib.util

    if requested:
        package = {"litert": "ai_edge_litert", "tf.lite": "tensorflow"}.get(requested, requested)
        if importlib.util.find_spec(package) is None:
            raise RunnerError(f"--runtime {requested}: not installed for {sys.executable}; "
                              f"{INSTALL[requested]}")
        return requested
    for name in RUNTIMES[:2]:
        try:
            import_runtime(name)
            return name
        except Exception:  # noqa: BLE001 - a broken install is as good as a missing one here
            continue
    if importlib.util.find_spec("tensorflow") is not None:
        return "tf.lite"
    raise RunnerError(f"no TFLite interpreter is installed for {sys.executable}: {INSTALL['litert']}")


def get_runtime(name: str) -> Runtime:
    try:
        return import_runtime(name)
    except RunnerError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise RunnerError(f"--runtime {name}: cannot be imported ({one_line(exc)}); {INSTALL[name]}") \
            from None


def read_model(path: str) -> bytes:
    """The model file's bytes, refused early when they cannot be a TFLite flatbuffer."""
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except OSError as exc:
        raise RunnerError(f"{path}: cannot read the model ({exc.strerror}); pass a .tflite file") from None
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise RunnerError(f"{path}: not a TFLite model (no 'TFL3' identifier at bytes 4-8); pass a .tflite "
                          "file written by the TFLite converter (edgekit compress)")
    return content


def delegate_library(name: str) -> str:
    if name != "edgetpu":
        return name  # any other value is the path of a delegate library
    names = {"Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
    return names.get(platform.system(), "libedgetpu.so.1")


def load_delegate(runtime: Runtime, name: str):
    """The delegate, or RunnerError '<name>: not available (<reason>)'."""
    library = delegate_library(name)
    try:
        # Loaded by hand first: a failed load_delegate leaves a half-built object whose __del__ prints
        # an "Exception ignored" traceback.
        ctypes.CDLL(library)
        return runtime.load_delegate(library)
    except (OSError, ValueError, RuntimeError) as exc:
        raise RunnerError(f"{name}: not available ({one_line(exc) or 'no device found'})") from None


@contextlib.contextmanager
def native_info_hidden():
    """Drop the interpreter's native 'INFO: Created ... XNNPACK delegate' line; pass other output on.

    It is written by C++ straight to file descriptor 2, so only a redirect of that descriptor hides it.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not line.startswith("INFO: ")))


def make_interpreter(runtime: Runtime, content: bytes, threads: int | None, delegates: list):
    with warnings.catch_warnings(), native_info_hidden():
        warnings.simplefilter("ignore")  # tf.lite's deprecation notice is not the user's problem
        interpreter = runtime.interpreter(model_content=content, num_threads=threads,
                                          experimental_delegates=delegates or None)
        interpreter.allocate_tensors()
    return interpreter


def probe_in_child(path: str, runtime: str, delegate: str | None) -> None:
    """Load and run the model once in a throw-away process: tf.lite can segfault on a damaged file."""
    command = [sys.executable, os.path.abspath(__file__), "_probe", path, "--runtime", runtime]
    if delegate:
        command += ["--delegate", delegate]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise RunnerError(f"{path}: {runtime} did not load this model within 600 s") from None
    if result.returncode == 0:
        return
    reason = last_error(result.stderr) if result.returncode == PROBE_REFUSED else None
    if reason is None and result.returncode < 0:
        reason = f"the interpreter crashed with {signal.Signals(-result.returncode).name}"
    elif reason is None:
        reason = f"the interpreter exited with code {result.returncode}"
    raise RunnerError(f"{path}: {runtime} cannot load this model ({reason}); re-export it with edgekit "
                      "compress")


def manifest_path(model_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), "manifest.json")


def read_manifest(model_path: str, sha256: str) -> dict:
    """`manifest.json` beside the model, if any, checked to describe this very file."""
    path = manifest_path(model_path)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as exc:
        raise RunnerError(f"{path}: not readable JSON ({one_line(exc)}); copy it again from the variant "
                          "directory or delete it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model", {}), dict):
        raise RunnerError(f"{path}: not an edgekit manifest; copy it again from the variant directory")
    record = (manifest.get("files") or {}).get(os.path.basename(model_path))
    if isinstance(record, dict) and record.get("sha256") not in (None, sha256):
        raise RunnerError(f"{path}: lists sha256 {str(record['sha256'])[:12]}... for "
                          f"{os.path.basename(model_path)} but the file has {sha256[:12]}...; copy the "
                          "manifest that came with this model (edgekit deploy does)")
    return manifest


# ---------------------------------------------------------------------------------------------------
# Standard TFLite Model Metadata, read without the flatbuffers package: labels from the zip packed onto the
# model, input normalisation (NormalizationOptions) from the "M001" flatbuffer in its TFLITE_METADATA buffer.
# Field numbers are those of tflite's schema.fbs and metadata_schema.fbs.

def _fb_table(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(position, vtable position, vtable size) of the flatbuffer table at `pos`."""
    vtable = pos - _fb_unpack("<i", buf, pos)
    return pos, vtable, _fb_unpack("<H", buf, vtable)


def _fb_field(buf: bytes, table: tuple[int, int, int], index: int) -> int | None:
    pos, vtable, size = table
    slot = 4 + 2 * index
    offset = _fb_unpack("<H", buf, vtable + slot) if slot < size else 0
    return pos + offset if offset else None


def _fb_vector(buf: bytes, table, index: int) -> tuple[int, int]:
    """(first element position, length) of a vector field; (0, 0) when absent."""
    at = _fb_field(buf, table, index)
    if at is None:
        return 0, 0
    vector = at + _fb_unpack("<I", buf, at)
    return vector + 4, _fb_unpack("<I", buf, vector)


def _fb_tables(buf: bytes, table, index: int) -> list:
    start, count = _fb_vector(buf, table, index)
    return [_fb_table(buf, start + 4 * i + _fb_unpack("<I", buf, start + 4 * i)) for i in range(count)]


def _fb_text(buf: bytes, table, index: int) -> str:
    start, count = _fb_vector(buf, table, index)
    return bytes(buf[start:start + count]).decode("utf-8", "replace")


def _fb_scalar(buf: bytes, table, index: int, fmt: str, default=0):
    at = _fb_field(buf, table, index)
    return default if at is None else _fb_unpack(fmt, buf, at)


def _fb_sub(buf: bytes, table, index: int):
    at = _fb_field(buf, table, index)
    return None if at is None else _fb_table(buf, at + _fb_unpack("<I", buf, at))


def _fb_unpack(fmt: str, buf: bytes, pos: int):
    import struct

    return struct.unpack_from(fmt, buf, pos)[0]


def _metadata_buffer(content: bytes) -> bytes | None:
    """The TFLITE_METADATA buffer of a .tflite (Model.metadata 6 → Metadata{name 0, buffer 1} → Buffer)."""
    model = _fb_table(content, _fb_unpack("<I", content, 0))
    buffers = None
    for entry in _fb_tables(content, model, 6):
        if _fb_text(content, entry, 0) == "TFLITE_METADATA":
            buffers = buffers or _fb_tables(content, model, 4)
            buffer = buffers[_fb_scalar(content, entry, 1, "<I")]
            offset, size = _fb_scalar(content, buffer, 1, "<Q"), _fb_scalar(content, buffer, 2, "<Q")
            if offset > 1:  # large models keep buffers after the flatbuffer
                return bytes(content[offset:offset + size])
            start, count = _fb_vector(content, buffer, 0)
            return bytes(content[start:start + count])
    return None


def _metadata_normalization(meta: bytes, tensor) -> tuple[list, list] | None:
    """TensorMetadata.process_units 4 → ProcessUnit{options_type 0, options 1} → NormalizationOptions{mean, std}."""
    for unit in _fb_tables(meta, tensor, 4):
        options = _fb_sub(meta, unit, 1)
        if _fb_scalar(meta, unit, 0, "<B") != 1 or options is None:  # 1: NormalizationOptions
            continue
        mean, std = ([_fb_unpack("<f", meta, start + 4 * i) for i in range(count)]
                     for start, count in (_fb_vector(meta, options, 0), _fb_vector(meta, options, 1)))
        if mean and std and len(mean) in (1, 3) and len(std) in (1, 3) and all(s != 0 for s in std):
            return mean, std
    return None


def _metadata_labels(content: bytes, meta: bytes, tensor) -> list[str] | None:
    """The output's TENSOR_AXIS_LABELS file (TensorMetadata.associated_files 6 → {name 0, type 2 = 2}), unzipped."""
    import zipfile

    for entry in _fb_tables(meta, tensor, 6):
        if _fb_scalar(meta, entry, 2, "<b") != 2:
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                text = archive.read(_fb_text(meta, entry, 0)).decode("utf-8-sig", "replace")
        except (zipfile.BadZipFile, KeyError, OSError, ValueError):
            return None
        return [line.strip() for line in text.splitlines() if line.strip()]
    return None


def read_standard_metadata(content: bytes, path: str) -> dict:
    """{"labels", "mean", "std", "name"} from a model's standard metadata; {} when it has none or it is damaged.

    Used only when no edgekit manifest describes the model: a stock model declares how to feed it here.
    """
    import struct

    try:
        meta = _metadata_buffer(content)
        if not meta or meta[4:8] != b"M001":
            return {}
        root = _fb_table(meta, _fb_unpack("<I", meta, 0))
        graphs = _fb_tables(meta, root, 3)  # ModelMetadata.subgraph_metadata
        inputs = _fb_tables(meta, graphs[0], 2) if graphs else []  # SubGraphMetadata.input_tensor_metadata
        outputs = _fb_tables(meta, graphs[0], 3) if graphs else []
        found = {"name": _fb_text(meta, root, 0)}
        normalization = _metadata_normalization(meta, inputs[0]) if inputs else None
        if normalization:
            found["mean"], found["std"] = normalization
        labels = _metadata_labels(content, meta, outputs[0]) if outputs else None
        if labels:
            found["labels"] = labels
        return found
    except (IndexError, ValueError, TypeError, OverflowError, struct.error) as exc:  # a damaged flatbuffer
        warn(f"{path}: ignoring unreadable TFLite metadata ({one_line(exc)})")
        return {}


def check_classifier(model) -> None:
    """classify and serve need one [1, N] score vector out; say what the model is otherwise."""
    outputs = model.interpreter.get_output_details()
    shape = [int(d) for d in outputs[0]["shape"]] if outputs else []
    if len(outputs) == 1 and len(shape) == 2 and shape[0] == 1:
        return
    described = "; ".join(f"{role} " + ", ".join(f"{np.dtype(d['dtype']).name}{[int(x) for x in d['shape']]}"
                                                  for d in details)
                          for role, details in (("inputs", model.interpreter.get_input_details()),
                                                ("outputs", outputs)))
    raise RunnerError(f"{model.path}: not an image classifier ({described}); this runner classifies images and "
                      "needs one [1, N] score output")


class Model:
    """A loaded interpreter and how to feed it; run() is safe to call from many threads."""

    def __init__(self, path: str, threads: int | None = None, delegate: str | None = None,
                 runtime: str | None = None, require_delegate: bool = True):
        require_numpy()
        self.path, self.threads, self.delegate, self.delegate_error = path, threads, delegate, None
        content = read_model(path)
        self.sha256 = hashlib.sha256(content).hexdigest()
        self.size_bytes = len(content)
        self.manifest = read_manifest(path, self.sha256)
        self.standard_metadata = read_standard_metadata(content, path)
        # Without an edgekit manifest, a model's standard metadata says how to normalise its input.
        found = self.standard_metadata
        self.normalization = None if self.manifest or "mean" not in found else (
            np.asarray(found["mean"], np.float32), np.asarray(found["std"], np.float32))
        self.runtime, self.interpreter, self.load_ms = self._load(content, runtime, require_delegate)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.num_outputs = int(np.prod(self.output["shape"][1:]))
        self._check_input()
        self.pixel_range = self._manifest_field("pixel_range", [0, 255])
        self.lock = threading.Lock()

    def _load(self, content: bytes, runtime: str | None, require_delegate: bool):
        """The runtime, the allocated interpreter, and the milliseconds loading took (delegate included)."""
        name = choose_runtime(runtime)
        if name != "litert":  # only LiteRT verifies every file before touching it
            probe_in_child(self.path, name, self.delegate)
        found = get_runtime(name)
        delegates = []
        start = time.perf_counter()
        if self.delegate:
            try:
                delegates.append(load_delegate(found, self.delegate))
            except RunnerError as exc:
                if require_delegate:
                    raise RunnerError(f"--delegate {exc}; {INSTALL['edgetpu']}, or drop --delegate") from None
                self.delegate_error = str(exc)
        try:
            interpreter = make_interpreter(found, content, self.threads, delegates)
        except (ValueError, RuntimeError) as exc:
            # An Edge TPU model fails here on the CPU when its delegate did not load: the real cause.
            hint = "re-export it with edgekit compress"
            if self.delegate_error:
                hint = f"--delegate {self.delegate_error}"
            error = RunnerError(f"{self.path}: {name} cannot load this model ({one_line(exc)}); {hint}")
            error.delegate_error = self.delegate_error
            raise error from None
        return found, interpreter, (time.perf_counter() - start) * 1e3

    def _manifest_field(self, key: str, default):
        value = self.manifest.get("model", {}).get(key, default)
        numbers = isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
        valid = numbers and len(value) == 2
        if not valid or value[0] == value[1]:
            raise RunnerError(f"{manifest_path(self.path)}: model.{key} is {value!r}, expected [low, high]")
        return [float(v) for v in value]

    def _check_input(self) -> None:
        shape = [int(d) for d in self.input["shape"]]
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise RunnerError(f"{self.path}: input shape {shape} is not [1, height, width, 3]; this runner "
                              "classifies RGB images")
        self.height, self.width = shape[1], shape[2]
        expected = self.manifest.get("model", {}).get("input_size")
        if expected is not None and (not isinstance(expected, list) or expected[:2] != shape[1:3]):
            raise RunnerError(f"{manifest_path(self.path)}: model.input_size {expected} does not match "
                              f"{self.path}'s input {shape[1:]}; copy the manifest that came with this model")
        if self.manifest.get("model", {}).get("resize", "bilinear") != "bilinear":
            raise RunnerError(f"{manifest_path(self.path)}: model.resize must be 'bilinear' for this runner")

    def to_input(self, pixels):
        """Float RGB 0..255 at model size → the input tensor's dtype, quantized if it is integer."""
        low, high = self.pixel_range
        if (low, high) != (0.0, 255.0):
            pixels = pixels * np.float32((high - low) / 255.0) + np.float32(low)
        if self.normalization is not None:
            pixels = (pixels - self.normalization[0]) / self.normalization[1]
        dtype = np.dtype(self.input["dtype"])
        if dtype == np.float32:
            return pixels.astype(np.float32, copy=False)
        scale, zero_point = self.input["quantization"]
        if dtype not in (np.uint8, np.int8) or not scale:
            raise RunnerError(f"{self.path}: input tensor is {dtype.name} without quantization parameters; "
                              "export a float32, int8 or uint8 input")
        info = np.iinfo(dtype)
        return np.clip(np.round(pixels / scale + zero_point), info.min, info.max).astype(dtype)

    def run(self, tensor):
        """Raw output vector and the milliseconds spent in invoke() alone."""
        with self.lock:  # one interpreter, many HTTP threads: its tensors are shared state
            self.interpreter.set_tensor(self.input["index"], tensor[None])
            start = time.perf_counter()
            self.interpreter.invoke()
            invoke_ms = (time.perf_counter() - start) * 1e3
            raw = self.interpreter.get_tensor(self.output["index"])
        return raw.reshape(-1), invoke_ms

    def scores(self, raw):
        scale, zero_point = self.output["quantization"]
        if raw.dtype in (np.uint8, np.int8, np.int16) and scale:
            return (raw.astype(np.float32) - zero_point) * np.float32(scale)
        return raw.astype(np.float32)

    def describe(self) -> dict:
        scale, zero_point = self.output["quantization"]
        return {
            "model": self.path, "model_sha256": self.sha256, "model_bytes": self.size_bytes,
            "runtime": {"name": self.runtime.name, "version": self.runtime.version},
            "threads": self.threads, "delegate": self.delegate, "delegate_error": self.delegate_error,
            "input": {"shape": [int(d) for d in self.input["shape"]],
                      "dtype": np.dtype(self.input["dtype"]).name},
            "output": {"shape": [int(d) for d in self.output["shape"]],
                       "dtype": np.dtype(self.output["dtype"]).name,
                       "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale
                       else None},
            "load_ms": self.load_ms,
        }


def read_labels(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return [line.strip() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise RunnerError(f"{path}: cannot read labels ({one_line(exc)}); pass a UTF-8 file with one label "
                          "per line") from None


def resolve_labels(model: Model, labels_path: str | None) -> list[str]:
    """--labels, else labels.txt beside the model, else the manifest's, else the metadata's, else index numbers."""
    beside = os.path.join(os.path.dirname(os.path.abspath(model.path)), "labels.txt")
    manifest_labels = model.manifest.get("model", {}).get("labels")
    if labels_path:
        source, labels = labels_path, read_labels(labels_path)
    elif os.path.isfile(beside):
        source, labels = beside, read_labels(beside)
    elif isinstance(manifest_labels, list):
        source, labels = f"{manifest_path(model.path)} model.labels", [str(x) for x in manifest_labels]
    elif model.standard_metadata.get("labels"):
        source, labels = f"{model.path} (labels in its TFLite metadata)", model.standard_metadata["labels"]
    else:
        return [str(i) for i in range(model.num_outputs)]
    if len(labels) != model.num_outputs:
        raise RunnerError(f"{source}: has {len(labels)} labels but the model outputs {model.num_outputs} "
                          "scores; pass the labels file that came with this model")
    return labels


# ---------------------------------------------------------------------------------------------------
# Preprocessing and classification


def decode_image(data: bytes, max_pixels: int):
    """RGB uint8 array of the first frame, and Pillow's format name; ImageError when unusable."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # replaced by our own limit, checked on the header before decoding
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, "
                                    f"over the {max_pixels / 1e6:g} megapixel limit; shrink it or raise "
                                    "--max-megapixels")
            image.seek(0)
            return np.asarray(image.convert("RGB")), image.format
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad files
        reason = "unknown format" if type(exc).__name__ == "UnidentifiedImageError" else one_line(exc)
        raise ImageError(f"not a readable image ({reason})") from None


def _resize_axis(in_size: int, out_size: int):
    """Source indices and weights along one axis, computed in float32 as TensorFlow's kernel does."""
    scale = np.float32(in_size) / np.float32(out_size)
    centres = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centres)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(centres), in_size - 1).astype(np.intp)
    return lower, upper, (centres - floor).astype(np.float32)


def resize_bilinear(image, height: int, width: int):
    """float32 resize equal to tf.image.resize(bilinear, antialias=False): half-pixel centres, edge clamp."""
    if image.shape[:2] == (height, width):
        return image.astype(np.float32)
    y0, y1, wy = _resize_axis(image.shape[0], height)
    x0, x1, wx = _resize_axis(image.shape[1], width)
    wx = wx[None, :, None]
    # Rows, then columns, gathered as uint8 and cast last: a 12 MP photo is never copied whole or as float.
    top, bottom = image.take(y0, axis=0), image.take(y1, axis=0)
    top_left, top_right = (top.take(x, axis=1).astype(np.float32) for x in (x0, x1))
    bottom_left, bottom_right = (bottom.take(x, axis=1).astype(np.float32) for x in (x0, x1))
    top = top_left + (top_right - top_left) * wx
    bottom = bottom_left + (bottom_right - bottom_left) * wx
    return top + (bottom - top) * wy[:, None, None]


def preprocess(model: Model, data: bytes, max_pixels: int):
    pixels, image_format = decode_image(data, max_pixels)
    return model.to_input(resize_bilinear(pixels, model.height, model.width)), image_format


def top_k(scores, labels: list[str], k: int) -> list[dict]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"label": labels[i], "index": int(i), "score": float(scores[i])} for i in order]


def classify_bytes(model: Model, labels: list[str], data: bytes, k: int, max_pixels: int):
    """One image's result (top_k, latency_ms) and its format; ImageError for a bad image."""
    start = time.perf_counter()
    tensor, image_format = preprocess(model, data, max_pixels)
    preprocess_ms = (time.perf_counter() - start) * 1e3
    raw, invoke_ms = model.run(tensor)
    start = time.perf_counter()
    ranked = top_k(model.scores(raw), labels, k)
    postprocess_ms = (time.perf_counter() - start) * 1e3
    latency = {"preprocess": preprocess_ms, "invoke": invoke_ms, "postprocess": postprocess_ms}
    return {"top_k": ranked, "latency_ms": latency}, image_format


def list_images(inputs: list[str]) -> list[tuple[str, bool]]:
    """(path, named explicitly) for every input; directories are walked for image files, sorted."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            in_dir = sorted(os.path.join(root, name) for root, _, names in os.walk(item) for name in names
                            if name.lower().endswith(IMAGE_EXTENSIONS))
            if not in_dir:
                raise RunnerError(f"{item}: no {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} files in it")
            found.extend((path, False) for path in in_dir)
        elif os.path.isfile(item):
            found.append((item, True))
        else:
            raise RunnerError(f"{item}: no such file or directory")
    return found


def read_image_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ImageError(f"cannot read it ({exc.strerror})") from None


# ---------------------------------------------------------------------------------------------------
# The prediction log


class PredictionLog:
    """The SQLite log of predictions, feedback and kept samples; safe across threads, processes and kills."""

    def __init__(self, path: str, busy_timeout: float = 5.0, create: bool = True,
                 sample_budget: int = 100 * 2**20):
        self.path, self.busy_timeout, self.sample_budget = path, busy_timeout, sample_budget
        self.directory = os.path.dirname(os.path.abspath(path))
        self.lock = threading.Lock()
        if not create and not os.path.isfile(path):
            raise RunnerError(f"{path}: no prediction log here; pass --db PATH (it is created beside the "
                              "model as edgekit_runner.db)")
        try:
            os.makedirs(self.directory, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._check_schema()
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from None

    def _check_schema(self) -> None:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = None
        if "meta" in tables:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = row and int(row[0])
        if version is None:
            with self.transaction() as db:
                for statement in SCHEMA:
                    db.execute(statement)
        elif version != SCHEMA_VERSION:
            raise RunnerError(f"{self.path}: schema_version {version}, this runner writes {SCHEMA_VERSION}; "
                              "use the edgekit_runner.py that created it, or pass --db elsewhere")

    def _error(self, exc: BaseException) -> RunnerError:
        text = one_line(exc)
        if "locked" in text or "busy" in text:
            return RunnerError(f"{self.path}: database is locked by another process (waited "
                               f"{self.busy_timeout:g} s); retry when it is done, or pass --db elsewhere")
        return RunnerError(f"{self.path}: cannot use the prediction log ({text}); pass --db elsewhere or "
                           "--no-log")

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT: writers queue for the busy timeout instead of failing half-way."""
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                    self.db.execute("COMMIT")
                except BaseException:
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def register_model(self, model: Model, labels: list[str]) -> None:
        """Remember each model's labels so `feedback` can check a label without the model at hand."""
        with self.transaction() as db:
            db.execute("INSERT INTO models VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET "
                       "path = excluded.path, labels = excluded.labels",
                       (model.sha256, os.path.abspath(model.path), json.dumps(labels), utc_now()))

    def log_prediction(self, model_sha256: str, source: str, result: dict, sample: bytes | None = None,
                       sample_ext: str = "img") -> str:
        prediction_id = uuid.uuid4().hex
        evicted = []
        with self.transaction() as db:
            image_path = None
            if sample is not None:
                image_path = self._keep_sample(db, prediction_id, sample, sample_ext, evicted)
            db.execute("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (prediction_id, utc_now(), model_sha256, source, json.dumps(result["top_k"]),
                        json.dumps(result["latency_ms"]), image_path, len(sample) if image_path else None))
        for path in evicted:  # only once the rows no longer point at them
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return prediction_id

    def _keep_sample(self, db, prediction_id: str, data: bytes, ext: str, evicted: list) -> str | None:
        """Write the sample within the budget, marking the oldest ones for deletion to make room."""
        dropped = 0
        if len(data) > self.sample_budget:
            self._add_dropped(db, 1)
            return None
        used = db.execute("SELECT COALESCE(SUM(image_bytes), 0) FROM predictions "
                          "WHERE image_path IS NOT NULL").fetchone()[0]
        if used + len(data) > self.sample_budget:
            oldest = db.execute("SELECT id, image_path, image_bytes FROM predictions "
                                "WHERE image_path IS NOT NULL ORDER BY time, rowid").fetchall()
            for old_id, old_path, old_bytes in oldest:
                if used + len(data) <= self.sample_budget:
                    break
                db.execute("UPDATE predictions SET image_path = NULL, image_bytes = NULL WHERE id = ?",
                           (old_id,))
                evicted.append(os.path.join(self.directory, old_path))
                used -= old_bytes or 0
                dropped += 1
        relative = f"samples/{prediction_id}.{ext}"
        try:
            write_file_durably(os.path.join(self.directory, relative), data)
        except OSError as exc:  # a full disk must not stop predictions
            warn(f"{os.path.join(self.directory, relative)}: sample not kept ({exc.strerror})")
            relative, dropped = None, dropped + 1
        self._add_dropped(db, dropped)
        return relative

    @staticmethod
    def _add_dropped(db, count: int) -> None:
        if count:
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_samples'", (count,))

    def add_feedback(self, prediction_id: str, label: str, source: str) -> int:
        with self.transaction() as db:
            row = db.execute("SELECT m.labels FROM predictions AS p LEFT JOIN models AS m "
                             "ON m.sha256 = p.model_sha256 WHERE p.id = ?", (prediction_id,)).fetchone()
            if row is None:
                raise UnknownPrediction(f"prediction {prediction_id!r} is not in {self.path}; pass an id "
                                        "printed by classify or returned by /predict")
            labels = json.loads(row[0]) if row[0] else None
            if labels is not None and label not in labels:
                shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
                raise RunnerError(f"label {label!r} is not one of the model's labels ({shown})")
            cursor = db.execute("INSERT INTO feedback (prediction_id, label, time, source) "
                                "VALUES (?, ?, ?, ?)", (prediction_id, label, utc_now(), source))
            return cursor.lastrowid

    def dropped_samples(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT value FROM meta WHERE key = 'dropped_samples'").fetchone()[0])

    def close(self) -> None:
        self.db.close()


def write_file_durably(path: str, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: a sample file is whole or absent."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def db_path(args, model_path: str | None) -> str:
    if args.db:
        return args.db
    if os.environ.get("EDGEKIT_RUNNER_DB"):
        return os.environ["EDGEKIT_RUNNER_DB"]
    directory = os.path.dirname(os.path.abspath(model_path)) if model_path else "."
    return os.path.join(directory, "edgekit_runner.db")


def open_log(args, model: Model, labels: list[str]) -> PredictionLog | None:
    if args.no_log:
        return None
    log = PredictionLog(db_path(args, model.path), args.busy_timeout,
                        sample_budget=int(args.sample_budget_mb * 2**20))
    log.register_model(model, labels)
    return log


class Logger:
    """Logs a classification and decides whether its input is kept as a sample."""

    def __init__(self, log: PredictionLog | None, model: Model, save_below: float, save_all: bool):
        self.log, self.model, self.save_below, self.save_all = log, model, save_below, save_all

    def __call__(self, source: str, result: dict, data: bytes, image_format: str | None) -> str | None:
        if self.log is None:
            return None
        keep = self.save_all or result["top_k"][0]["score"] < self.save_below
        ext = SAMPLE_EXTENSIONS.get(image_format or "", "img")
        return self.log.log_prediction(self.model.sha256, source, result, data if keep else None, ext)


# ---------------------------------------------------------------------------------------------------
# Subcommands: classify, feedback


def load_for_classify(args):
    """Model, labels and logger shared by classify and serve, in the order their errors are cheapest."""
    require_numpy()
    require_pillow()
    model = Model(args.model, args.threads, args.delegate, args.runtime)
    check_classifier(model)
    labels = resolve_labels(model, args.labels)
    logger = Logger(open_log(args, model, labels), model, args.save_below, args.save_all)
    return model, labels, logger


def cmd_classify(args) -> int:
    images = list_images(args.inputs)
    model, labels, logger = load_for_classify(args)
    k, max_pixels = min(args.top_k, model.num_outputs), int(args.max_megapixels * 1e6)
    results = []
    for path, explicit in images:
        try:
            data = read_image_file(path)
            result, image_format = classify_bytes(model, labels, data, k, max_pixels)
        except ImageError as exc:
            if explicit:
                raise RunnerError(f"{path}: {exc}") from None
            warn(f"{path}: skipped, {exc}")
            continue
        result = {"id": logger(os.path.abspath(path), result, data, image_format), "path": path, **result}
        results.append(result)
        if not args.json:
            print_result(result)
    if logger.log:
        logger.log.close()
    if args.json:
        print(json.dumps(results, indent=2))
    if not results:
        raise RunnerError("no image could be classified; see the warnings above")
    return 0


def print_result(result: dict) -> None:
    latency = result["latency_ms"]
    print(f"{result['path']}  id {result['id'] or '-'}  (preprocess {latency['preprocess']:.2f} ms, "
          f"invoke {latency['invoke']:.2f} ms, postprocess {latency['postprocess']:.2f} ms)")
    for item in result["top_k"]:
        print(f"  {item['score']:.4f}  {item['label']}")
    sys.stdout.flush()


def cmd_feedback(args) -> int:
    log = PredictionLog(db_path(args, None), args.busy_timeout, create=False)
    try:
        feedback_id = log.add_feedback(args.id, args.label, "cli")
    finally:
        log.close()
    print(f"feedback {feedback_id}: prediction {args.id} is {args.label!r}")
    return 0


# ---------------------------------------------------------------------------------------------------
# Subcommand: serve


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Stats:
    """Counts and recent latencies since the server started, for GET /stats."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.counts = {"requests": 0, "predictions": 0, "feedback": 0, "errors": 0}
        self.invoke_ms, self.request_ms = deque(maxlen=10000), deque(maxlen=10000)

    def add(self, key: str, invoke_ms: float | None = None, request_ms: float | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if invoke_ms is not None:
                self.invoke_ms.append(invoke_ms)
                self.request_ms.append(request_ms)

    def snapshot(self) -> dict:
        with self.lock:
            latency = {name: percentiles(list(values)) for name, values in
                       (("invoke", self.invoke_ms), ("request", self.request_ms))}
            return {**self.counts, "uptime_s": round(time.time() - self.started, 3), "latency_ms": latency}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(np.asarray(values), [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


class App:
    """What the HTTP handler threads share."""

    def __init__(self, args, model: Model, labels: list[str], logger: Logger, token: str | None):
        self.model, self.labels, self.logger, self.token = model, labels, logger, token
        self.top_k = min(args.top_k, model.num_outputs)
        self.max_pixels = int(args.max_megapixels * 1e6)
        self.max_body = args.max_body_bytes
        self.stats = Stats()


class Handler(BaseHTTPRequestHandler):
    server_version = "edgekit-runner/" + RUNNER_VERSION
    timeout = 30  # a client that stops sending must not hold a thread forever

    @property
    def app(self) -> App:
        return self.server.app

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._dispatch({"/health": self._health, "/stats": self._stats})

    def do_POST(self):  # noqa: N802
        self._dispatch({"/predict": self._predict, "/feedback": self._feedback})

    def _dispatch(self, routes: dict) -> None:
        started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        try:
            if path not in routes:
                raise HttpError(404, f"no endpoint {self.command} {path}; use POST /predict, POST /feedback, "
                                "GET /health or GET /stats")
            if path != "/health" and not self._authorized():
                raise HttpError(401, "send 'Authorization: Bearer <token>' with the server's token")
            self._send(200, routes[path](started))
        except HttpError as exc:
            self._send(exc.status, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
            self.log_error("internal error: %s", one_line(exc))
            self._send(500, {"error": f"internal error ({one_line(exc)})"})

    def _authorized(self) -> bool:
        if self.app.token is None:
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        matches = hmac.compare_digest(given.strip().encode(), self.app.token.encode())
        return scheme.lower() == "bearer" and matches

    def _send(self, status: int, payload: dict) -> None:
        self.app.stats.add("requests")
        if status >= 400:
            self.app.stats.add("errors")
            self.close_connection = True  # the body may be unread; the connection cannot be reused
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client went away

    def _body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "chunked bodies are not supported; send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HttpError(411, "send the body with a Content-Length header") from None
        if length > limit:  # answered before reading: a huge upload is refused, not buffered
            raise HttpError(413, f"body is {length} bytes, over the {limit}-byte limit (--max-body-bytes)")
        data = self.rfile.read(length) if length > 0 else b""
        if len(data) != length:
            raise HttpError(400, f"body ended after {len(data)} of {length} bytes")
        return data

    def _health(self, started: float) -> dict:
        return {"status": "ok"}

    def _stats(self, started: float) -> dict:
        app = self.app
        log = app.logger.log
        return {**app.stats.snapshot(), "model_sha256": app.model.sha256,
                "runtime": {"name": app.model.runtime.name, "version": app.model.runtime.version},
                "dropped_samples": log.dropped_samples() if log else None}

    def _predict(self, started: float) -> dict:
        app = self.app
        data = self._body(app.max_body)
        try:
            result, image_format = classify_bytes(app.model, app.labels, data, app.top_k, app.max_pixels)
        except ImageTooLarge as exc:
            raise HttpError(413, str(exc)) from None
        except ImageError as exc:
            raise HttpError(400, f"body is {exc}; POST the raw bytes of a JPEG, PNG, BMP, GIF or WebP") \
                from None
        response = {"id": None, **result, "model_sha256": app.model.sha256}
        try:
            response["id"] = app.logger("http", result, data, image_format)
        except RunnerError as exc:  # the prediction is still good; say why it is not on record
            response["log_error"] = str(exc)
            self.log_error("%s", exc)
        request_ms = (time.perf_counter() - started) * 1e3
        response["latency_ms"] = {**result["latency_ms"], "request": request_ms}
        app.stats.add("predictions", result["latency_ms"]["invoke"], request_ms)
        return response

    def _feedback(self, started: float) -> dict:
        log = self.app.logger.log
        try:
            payload = json.loads(self._body(64 * 1024))
        except ValueError:
            raise HttpError(400, 'body is not JSON; send {"id": "...", "label": "..."}') from None
        if not isinstance(payload, dict) or not all(isinstance(payload.get(k), str) for k in ("id", "label")):
            raise HttpError(400, 'send {"id": "<prediction id>", "label": "<correct label>"} as JSON strings')
        if log is None:
            raise HttpError(409, "this server runs with --no-log; feedback cannot be recorded")
        try:
            feedback_id = log.add_feedback(payload["id"], payload["label"], "http")
        except UnknownPrediction as exc:
            raise HttpError(404, str(exc)) from None
        except RunnerError as exc:
            raise HttpError(503 if "locked" in str(exc) else 400, str(exc)) from None
        self.app.stats.add("feedback")
        return {"ok": True, "feedback_id": feedback_id}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple, app: App):
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)


def read_token(token_file: str | None) -> str | None:
    """The bearer token from --token-file or $EDGEKIT_RUNNER_TOKEN; never from argv, which `ps` shows."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise RunnerError(f"--token-file {token_file}: cannot read it ({exc.strerror})") from None
        source = f"--token-file {token_file}"
    else:
        token, source = os.environ.get("EDGEKIT_RUNNER_TOKEN", "").strip(), "EDGEKIT_RUNNER_TOKEN"
    if token and len(token) < 16:
        raise RunnerError(f"{source}: the token is shorter than 16 characters; make one with python3 -c "
                          "'import secrets; print(secrets.token_urlsafe(24))'")
    return token or None


def cmd_serve(args) -> int:
    token = read_token(args.token_file)
    if args.host not in LOCAL_HOSTS and token is None:
        raise RunnerError(f"--host {args.host}: serving beyond this machine needs a token; set "
                          "EDGEKIT_RUNNER_TOKEN or pass --token-file PATH (clients send 'Authorization: "
                          "Bearer <token>')")
    model, labels, logger = load_for_classify(args)
    try:
        server = Server((args.host, args.port), App(args, model, labels, logger, token))
    except OSError as exc:
        raise RunnerError(f"--host {args.host} --port {args.port}: cannot listen ({exc.strerror or exc}); "
                          "pick another port or host") from None
    host, port = server.server_address[:2]
    print(f"edgekit_runner: serving {args.model} ({model.runtime.name} {model.runtime.version}) on "
          f"http://{host}:{port}  POST /predict, POST /feedback, GET /health, GET /stats",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if logger.log:
            logger.log.close()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------------
# Subcommand: bench


def bench_inputs(source: str, model: Model, limit: int):
    """Model-ready input tensors and where each came from: images from a directory, or x from an .npz."""
    if source.endswith(".npz"):
        try:
            with np.load(source) as archive:
                x = archive["x"]
        except Exception as exc:  # noqa: BLE001 - numpy raises OSError, KeyError, ValueError, BadZipFile...
            raise RunnerError(f"--images {source}: cannot read array 'x' ({one_line(exc)}); save one with "
                              "numpy.savez(path, x=images)") from None
        if x.ndim != 4 or list(x.shape[1:]) != [model.height, model.width, 3] or not len(x):
            raise RunnerError(f"--images {source}: x has shape {list(x.shape)}, the model takes "
                              f"[N, {model.height}, {model.width}, 3] float32 pixels 0..255")
        x = x[:limit].astype(np.float32)
        return [model.to_input(image) for image in x], [f"x[{i}]" for i in range(len(x))]
    require_pillow()
    tensors, sources = [], []
    for path, _ in list_images([source]):
        if len(tensors) >= limit:
            break
        try:
            tensor, _ = preprocess(model, read_image_file(path), 40 * 10**6)
        except ImageError as exc:
            warn(f"{path}: skipped, {exc}")
            continue
        tensors.append(tensor)
        sources.append(path)
    if not tensors:
        raise RunnerError(f"--images {source}: no readable images")
    return tensors, sources


class RawModel(Model):
    """Any .tflite, fed raw tensors for every input: what `bench --inputs` and `predict --inputs` time.

    It loads exactly as Model does (same runtime choice, probe and delegate handling) but skips the
    image-classifier checks, so a detector, a segmenter or a two-input model can be measured as well.
    """

    def __init__(self, path: str, threads: int | None = None, delegate: str | None = None,
                 runtime: str | None = None, require_delegate: bool = True):
        require_numpy()
        self.path, self.threads, self.delegate, self.delegate_error = path, threads, delegate, None
        content = read_model(path)
        self.sha256 = hashlib.sha256(content).hexdigest()
        self.size_bytes = len(content)
        self.manifest = {}
        self.runtime, self.interpreter, self.load_ms = self._load(content, runtime, require_delegate)
        self.inputs = self.interpreter.get_input_details()
        self.input = self.inputs[0]
        self.output = self.interpreter.get_output_details()[0]
        self.lock = threading.Lock()

    def run(self, tensors):
        """Raw first output and the milliseconds of invoke() alone; `tensors` holds one array per input."""
        with self.lock:
            for detail, tensor in zip(self.inputs, tensors):
                self.interpreter.set_tensor(detail["index"], tensor)
            start = time.perf_counter()
            self.interpreter.invoke()
            invoke_ms = (time.perf_counter() - start) * 1e3
            raw = self.interpreter.get_tensor(self.output["index"])
        return raw.reshape(-1), invoke_ms

    def describe(self) -> dict:
        described = super().describe()
        described["inputs"] = [{"name": d["name"], "shape": [int(s) for s in d["shape"]],
                                "dtype": np.dtype(d["dtype"]).name} for d in self.inputs]
        return described


def raw_inputs(source: str, model: RawModel, limit: int):
    """Per-sample lists of input tensors from an .npz holding `input_<i>` arrays of shape [N, *tensor shape]."""
    try:
        with np.load(source) as archive:
            arrays = [archive[f"input_{i}"] for i in range(len(model.inputs))]
    except Exception as exc:  # noqa: BLE001 - as in bench_inputs
        raise RunnerError(f"--inputs {source}: cannot read input_0..input_{len(model.inputs) - 1} "
                          f"({one_line(exc)}); the model has {len(model.inputs)} input(s)") from None
    for i, (detail, array) in enumerate(zip(model.inputs, arrays)):
        expected = [int(d) for d in detail["shape"]]
        if list(array.shape[1:]) != expected or np.dtype(detail["dtype"]) != array.dtype or not len(array):
            raise RunnerError(f"--inputs {source}: input_{i} is {array.dtype.name} {list(array.shape)}, the "
                              f"model's input {i} takes [N, {', '.join(map(str, expected))}] "
                              f"{np.dtype(detail['dtype']).name}")
    count = min(limit, *(len(a) for a in arrays))
    return [[a[n] for a in arrays] for n in range(count)], [f"input[{n}]" for n in range(count)]


def load_bench_model(args):
    """(model, input tensors, their sources) for `--images` (a classifier) or `--inputs` (any model)."""
    if bool(args.images) == bool(args.inputs):
        raise RunnerError("pass exactly one of --images (an image classifier) or --inputs (raw tensors, any model)")
    kind = RawModel if args.inputs else Model
    model = kind(args.model, args.threads, args.delegate, args.runtime,
                 require_delegate=getattr(args, "require_delegate", True))
    limit = getattr(args, "max_images", None) or 10**9
    if args.inputs:
        return model, *raw_inputs(args.inputs, model, limit)
    return model, *bench_inputs(args.images, model, limit)


def usable_cores() -> int | None:
    """Cores this process may run on (a container or taskset can allow fewer than the machine has)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def cap_threads(args, result: dict) -> None:
    """More interpreter threads than cores only adds contention: cap them and record both figures."""
    cores = usable_cores()
    result["threads_requested"] = args.threads
    if args.threads and cores and args.threads > cores:
        args.threads = cores
    result["threads_capped"] = args.threads != result["threads_requested"]


def output_sample(raw) -> list:
    """The first OUTPUT_SAMPLE_VALUES raw values: enough to compare runtimes, small enough for JSON."""
    return raw[:OUTPUT_SAMPLE_VALUES].tolist()


def run_bench(args, result: dict) -> None:
    cap_threads(args, result)
    model, inputs, sources = load_bench_model(args)
    result.update(model.describe())
    result["input"].update(source=args.inputs or args.images, count=len(inputs),
                           kind="raw tensors" if args.inputs else "images")
    _, result["first_ms"] = model.run(inputs[0])
    for i in range(args.warmup):
        model.run(inputs[(i + 1) % len(inputs)])
    latencies, outputs = [], []
    start = time.perf_counter()
    while len(latencies) < args.runs or time.perf_counter() - start < args.min_seconds:
        i = len(latencies) % len(inputs)
        raw, invoke_ms = model.run(inputs[i])
        latencies.append(invoke_ms)
        if len(outputs) < min(SAMPLE_OUTPUTS, len(inputs)) and len(latencies) <= len(inputs):
            outputs.append({"index": i, "source": sources[i], "argmax": int(np.argmax(raw)),
                            "output": output_sample(raw)})
    wall = time.perf_counter() - start
    values = np.asarray(latencies)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    result.update(warmup=args.warmup, wall_s=wall, throughput_ips=len(values) / wall, latency_ms={
        "n": len(values), "mean": float(values.mean()), "std": float(values.std()), "p50": float(p50),
        "p90": float(p90), "p99": float(p99), "min": float(values.min()), "max": float(values.max())})
    result["outputs"] = outputs


def peak_rss_mb() -> float | None:
    """This process's own peak resident memory.

    VmHWM is per address space, so it starts afresh at exec. getrusage's ru_maxrss is kept across
    fork and exec on Linux: a runner started by a 700 MB parent would report 700 MB. It is only the
    fallback where /proc is absent (macOS, BSD).
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


def cmd_bench(args) -> int:
    result = {"runner_version": RUNNER_VERSION, "model": args.model, "device": device_info()}
    try:
        require_numpy()
        run_bench(args, result)
    except RunnerError as exc:
        result["error"] = str(exc)
        if getattr(exc, "delegate_error", None):
            result["delegate_error"] = exc.delegate_error
        raise
    finally:
        result["peak_rss_mb"] = peak_rss_mb()
        if args.json:
            print(json.dumps(result, indent=2))
    if not args.json:
        print_bench(result)
    return 0


def print_bench(result: dict) -> None:
    latency = result["latency_ms"]
    runtime = result["runtime"]
    capped = f" (asked {result['threads_requested']}, capped to the cores)" if result.get("threads_capped") else ""
    print(f"{result['model']}  sha256 {result['model_sha256'][:12]}  {runtime['name']} {runtime['version']}, "
          f"threads {result['threads'] or 'default'}{capped}, delegate {result['delegate'] or 'none'}")
    if result.get("delegate_error"):
        print(f"  delegate error: {result['delegate_error']}")
    print(f"  load {result['load_ms']:.1f} ms, first inference {result['first_ms']:.2f} ms, "
          f"{result['input']['count']} inputs, peak RSS {result['peak_rss_mb'] or 0:.0f} MB")
    print(f"  invoke over {latency['n']} runs: mean {latency['mean']:.3f} ms, p50 {latency['p50']:.3f}, "
          f"p90 {latency['p90']:.3f}, p99 {latency['p99']:.3f}, min {latency['min']:.3f}, "
          f"max {latency['max']:.3f}; {result['throughput_ips']:.1f} inferences/s")


# ---------------------------------------------------------------------------------------------------
# Subcommand: predict (raw outputs for the host's on-device accuracy pass)


def cmd_predict(args) -> int:
    """Run every input once and print the raw first output of each, with what ran them.

    The host turns these into accuracy on the device and compares them, in quantization steps, with
    the outputs LiteRT gave on the host: a different runtime or delegate can change the answers.
    """
    result = {"runner_version": RUNNER_VERSION, "model": args.model, "device": device_info()}
    try:
        require_numpy()
        cap_threads(args, result)
        model, inputs, _ = load_bench_model(args)
        result.update(model.describe())
        outputs = [model.run(tensor)[0].tolist() for tensor in inputs]
        result.update(count=len(outputs), outputs=outputs)
    except RunnerError as exc:
        result["error"] = str(exc)
        raise
    finally:
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))  # a machine-facing subcommand: always one JSON document
    return 0


# ---------------------------------------------------------------------------------------------------
# Subcommand: doctor and the hidden _probe


def os_name() -> str:
    """The distribution as people name it (`Debian GNU/Linux 12 (bookworm)`), else the platform string."""
    with contextlib.suppress(OSError):
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def device_info() -> dict:
    info = {"machine": platform.machine(), "system": platform.system(), "os": os_name(),
            "kernel": platform.release(), "python": platform.python_version(),
            "numpy": getattr(np, "__version__", None), "cpu_count": os.cpu_count(), "usable_cores": usable_cores(),
            "cpu_model": None, "memory_total_mb": None, "hostname": socket.gethostname()}
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    info["memory_total_mb"] = round(int(line.split()[1]) / 1024)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    info["cpu_model"] = value.strip()  # Raspberry Pi puts the board in 'Model'
    return info


def run_probe(*options: str) -> subprocess.Popen:
    command = [sys.executable, os.path.abspath(__file__), "_probe", *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def probe_result(child: subprocess.Popen) -> tuple[dict | None, str | None]:
    """(what the child printed, None) or (None, why it failed)."""
    try:
        out, err = child.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
    try:
        return json.loads(out.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, last_error(err) or f"the import crashed (exit code {child.returncode})"


def probe_runtimes() -> list[dict]:
    """Import each interpreter in its own process, in parallel: a broken install can crash its importer."""
    children = [(name, run_probe("--runtime", name)) for name in RUNTIMES]
    found = []
    for name, child in children:
        printed, error = probe_result(child)
        found.append({"name": name, "available": printed is not None,
                      "version": printed["version"] if printed else None, "error": error,
                      "install": INSTALL[name]})
    return found


def probe_edgetpu(runtime: str | None) -> dict:
    """Whether libedgetpu loads here and, through `runtime`, whether it finds an Edge TPU."""
    library = delegate_library("edgetpu")
    report = {"library": library, "loads": False, "device": False, "error": None,
              "install": INSTALL["edgetpu"]}
    try:
        ctypes.CDLL(library)
    except OSError as exc:
        report["error"] = one_line(exc)
        return report
    report["loads"] = True
    if runtime:  # in a child: the delegate holds the device, which the next process may want
        printed, error = probe_result(run_probe("--runtime", runtime, "--delegate", "edgetpu"))
        report["device"] = bool(printed) and printed["delegate"] == "ok"
        report["error"] = error if printed is None else (None if report["device"] else printed["delegate"])
    return report


def cmd_doctor(args) -> int:
    report = {"runner_version": RUNNER_VERSION, "executable": sys.executable, **device_info(), "pillow": None}
    with contextlib.suppress(ImportError):
        import PIL

        report["pillow"] = PIL.__version__
    report["runtimes"] = probe_runtimes()
    usable = [r["name"] for r in report["runtimes"] if r["available"]]
    report["selected_runtime"] = usable[0] if usable else None
    report["edgetpu"] = probe_edgetpu(report["selected_runtime"])
    missing = [INSTALL[name] for name in ("numpy", "pillow") if report[name] is None]
    if not usable:
        missing.append(f"{INSTALL['litert']} (or {INSTALL['tflite_runtime']})")
    report["missing"] = missing
    print(json.dumps(report, indent=2) if args.json else format_doctor(report))
    if missing:
        raise RunnerError(f"this device cannot run models yet: {'; '.join(missing)}")
    return 0


def format_doctor(report: dict) -> str:
    lines = [f"python          {report['python']} ({report['executable']})",
             f"machine         {report['system']} {report['machine']}, {report['cpu_count']} CPUs"
             f"{' (' + report['cpu_model'] + ')' if report['cpu_model'] else ''}, "
             f"{report['memory_total_mb'] or '?'} MB memory",
             f"numpy           {report['numpy'] or 'missing: ' + INSTALL['numpy']}",
             f"pillow          {report['pillow'] or 'missing: ' + INSTALL['pillow']}"]
    for runtime in report["runtimes"]:
        used = "  <- used" if runtime["name"] == report["selected_runtime"] else ""
        state = (runtime["version"] if runtime["available"]
                 else f"missing ({runtime['error']}): {runtime['install']}")
        lines.append(f"{runtime['name']:<15} {state}{used}")
    edgetpu = report["edgetpu"]
    if edgetpu["loads"]:
        state = "Edge TPU found" if edgetpu["device"] else f"library loads, no Edge TPU ({edgetpu['error']})"
    else:
        state = f"missing ({edgetpu['error']}): {edgetpu['install']}"
    lines.append(f"edgetpu         {state}")
    return "\n".join(lines)


def cmd_probe(args) -> int:
    """Child-process half of probe_in_child and doctor: exit 0, or PROBE_REFUSED after a Python error."""
    try:
        runtime = import_runtime(args.runtime or choose_runtime(None))
        delegates, delegate_state = [], None
        if args.delegate:
            try:
                delegates.append(load_delegate(runtime, args.delegate))
                delegate_state = "ok"
            except RunnerError as exc:  # the parent reports delegate problems itself
                delegate_state = str(exc)
        if args.model:
            interpreter = make_interpreter(runtime, read_model(args.model), None, delegates)
            detail = interpreter.get_input_details()[0]
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
        print(json.dumps({"name": runtime.name, "version": runtime.version, "delegate": delegate_state}))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        print(f"edgekit_runner: error: {one_line(exc)}", file=sys.stderr)
        return PROBE_REFUSED
    return 0


# ---------------------------------------------------------------------------------------------------
# Command line


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 1, like every other user error
        self.exit(1, f"{self.prog}: error: {message}; see --help\n")


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
        return value

    return parse


def byte_size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}
    number = text.rstrip("KMGBkmgb")
    unit = units.get(text[len(number):].upper())
    if unit is None:
        raise argparse.ArgumentTypeError(f"{text!r}: use bytes or a KB/MB/GB suffix")
    return int(positive(float)(number) * unit)


def add_model_options(parser) -> None:
    parser.add_argument("model", help="the .tflite file")
    parser.add_argument("--threads", type=positive(int), help="interpreter threads (default: the runtime's)")
    parser.add_argument("--delegate", help="'edgetpu' (Coral) or the path of a delegate library")
    parser.add_argument("--runtime", choices=RUNTIMES, help="force an interpreter (default: first installed)")


def add_classify_options(parser) -> None:
    add_model_options(parser)
    parser.add_argument("--labels", help="labels file, one per line (default: labels.txt beside the model, "
                        "else manifest.json)")
    parser.add_argument("--top-k", type=positive(int), default=3, help="how many labels to report (3)")
    parser.add_argument("--max-megapixels", type=positive(float), default=40.0,
                        help="refuse larger images before decoding them (40)")
    parser.add_argument("--db", help="prediction log (default: $EDGEKIT_RUNNER_DB, else edgekit_runner.db "
                        "beside the model)")
    parser.add_argument("--no-log", action="store_true", help="do not log predictions")
    parser.add_argument("--busy-timeout", type=positive(float), default=5.0,
                        help="seconds to wait for a database locked by another process (5)")
    parser.add_argument("--save-below", type=float, default=0.6,
                        help="keep the input image when the top score is below this (0.6)")
    parser.add_argument("--save-all", action="store_true", help="keep every input image")
    parser.add_argument("--sample-budget-mb", type=positive(float), default=100.0,
                        help="disk budget for kept images; the oldest go first (100)")


def add_input_options(parser) -> None:
    parser.add_argument("--images", help="image classifiers: a directory of images, or .npz with x [N,H,W,3] "
                        "float pixels 0..255")
    parser.add_argument("--inputs", help="any model: .npz with input_0, input_1, ... each [N, *input shape] "
                        "in the input's own dtype")


def build_parser() -> Parser:
    parser = Parser(prog="python3 edgekit_runner.py", description=__doc__.split("\n", 2)[2],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{classify,serve,feedback,bench,predict,doctor}",
                                     required=True)

    classify = commands.add_parser("classify", help="classify images or directories of images",
                                   description="$ python3 edgekit_runner.py classify model.tflite photos/")
    add_classify_options(classify)
    classify.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    classify.add_argument("--json", action="store_true", help="print one JSON document")
    classify.set_defaults(func=cmd_classify)

    serve = commands.add_parser("serve", help="serve POST /predict over HTTP",
                                description="$ python3 edgekit_runner.py serve model.tflite --port 8080")
    add_classify_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1); others need a token")
    serve.add_argument("--port", type=int, default=8080, help="port (8080; 0 picks a free one)")
    serve.add_argument("--max-body-bytes", type=byte_size, default=10 * 2**20, help="largest upload (10MB)")
    serve.add_argument("--token-file", help="file holding the bearer token (else $EDGEKIT_RUNNER_TOKEN)")
    serve.set_defaults(func=cmd_serve)

    feedback = commands.add_parser("feedback", help="record the correct label for a prediction",
                                   description="$ python3 edgekit_runner.py feedback 3f2a0c9e... cat")
    feedback.add_argument("id", help="prediction id printed by classify or returned by /predict")
    feedback.add_argument("label", help="the correct label, one of the model's labels")
    feedback.add_argument("--db", help="prediction log ($EDGEKIT_RUNNER_DB, else ./edgekit_runner.db)")
    feedback.add_argument("--busy-timeout", type=positive(float), default=5.0, help="seconds to wait (5)")
    feedback.set_defaults(func=cmd_feedback)

    bench = commands.add_parser("bench", help="measure load, first and steady-state inference latency",
                                description="$ python3 edgekit_runner.py bench model.tflite --images photos/")
    add_model_options(bench)
    add_input_options(bench)
    bench.add_argument("--runs", type=positive(int), default=50, help="at least this many timed runs (50)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed runs first (5)")
    bench.add_argument("--min-seconds", type=float, default=2.0, help="and at least this long (2)")
    bench.add_argument("--max-images", type=positive(int), default=64, help="inputs to cycle through (64)")
    bench.add_argument("--require-delegate", action="store_true", help="fail if --delegate cannot load")
    bench.add_argument("--json", action="store_true", help="print one JSON document")
    bench.set_defaults(func=cmd_bench)

    predict = commands.add_parser("predict", help="print the raw first output for every input (JSON)",
                                  description="$ python3 edgekit_runner.py predict model.tflite --images val.npz")
    add_model_options(predict)
    add_input_options(predict)
    predict.add_argument("--json", action="store_true", help="accepted for symmetry; the output is always JSON")
    predict.set_defaults(func=cmd_predict)

    doctor = commands.add_parser("doctor", help="report what this device can run and what to install",
                                 description="$ python3 edgekit_runner.py doctor")
    doctor.add_argument("--json", action="store_true", help="print one JSON document")
    doctor.set_defaults(func=cmd_doctor)

    probe = commands.add_parser("_probe")
    probe.add_argument("model", nargs="?")
    probe.add_argument("--runtime", choices=RUNTIMES)
    probe.add_argument("--delegate")
    probe.set_defaults(func=cmd_probe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RunnerError as exc:
        print(f"edgekit_runner: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `classify ... | head`: the reader left, which is not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
