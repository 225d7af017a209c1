"""usage: python3 edgekit_runner.py [-h] {classify,serve,live,feedback,shadow-report,bench,predict,doctor} ...

The on-device half of edgekit: classify images with a .tflite model, serve it over HTTP, classify a
camera, video, stream or watched folder, record corrections, benchmark it and report what the device
can run. It is one file that imports nothing
from edgekit, so `edgekit deploy` can copy it beside a model onto a Raspberry Pi or Coral board; it
needs Python 3.9+, numpy, Pillow and one TFLite interpreter (ai-edge-litert, tflite-runtime or
tensorflow, tried in that order).

  python3 edgekit_runner.py classify model.tflite photos/ --top-k 3
  python3 edgekit_runner.py serve model.tflite --port 8080
  python3 edgekit_runner.py serve model.tflite --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
  python3 edgekit_runner.py live model.tflite /dev/video0 --fps 5 --log-policy change
  python3 edgekit_runner.py feedback 3f2a0c9e5b7d4e1f8a6b2c4d9e0f1a2b cat --db edgekit_runner.db
  python3 edgekit_runner.py serve model.tflite --shadow candidate.tflite --shadow-tag rollout-1
  python3 edgekit_runner.py shadow-report --db edgekit_runner.db --tag rollout-1 --json
  python3 edgekit_runner.py bench model.tflite --images photos/ --json
  python3 edgekit_runner.py predict model.tflite --images inputs.npz --json
  python3 edgekit_runner.py doctor

Preprocessing matches edgekit's TensorFlow pipeline: Pillow decodes the first frame (JPEGs with the
accurate integer DCT, equal to tf.io.decode_jpeg with dct_method="INTEGER_ACCURATE", and scaled by 1/2,
1/4 or 1/8 inside the DCT when the image is at least that many times the input size, as edgekit's
training does with decode_jpeg(ratio=...)), turns it upright by its EXIF orientation (training does too),
keeps the high byte of 16-bit images, and a numpy bilinear resize equal to
`tf.image.resize(method="bilinear", antialias=False)` squashes it to the model's input size. Integer
inputs get round(x / scale + zero_point), numpy's round-half-even, as edgekit's evaluation does. Input
size comes from the model; `manifest.json` beside it supplies pixel range and labels, cross-checked.
Without one, the model's standard TFLite metadata supplies labels and normalisation; metadata that is
there but unreadable is refused (one error line), never guessed around. edgekit imports this file as
`edgekit.runner` for all of this, so the host feeds a model exactly as the device does.

Every prediction is logged in SQLite (`edgekit_runner.db` beside the model, or $EDGEKIT_RUNNER_DB, or
--db), in WAL mode. Durability contract: a logged row and its sample survive a kill of the runner as soon
as the prediction is answered (the commit is in the operating system's cache), and survive a power cut
once the next grouped fsync has run, at most --sync-interval seconds later (1 s; the runner fsyncs the
WAL, the samples and their folder, and again on a clean stop). --sync-interval 0 fsyncs every row before
it answers (synchronous=FULL), at about one SD-card flush per image. Retention: at most --keep-rows rows
(100000) and, with --keep-days, none older; rows with feedback are kept; trimmed rows are counted in
meta 'trimmed_rows'. At start, `*.tmp` and unreferenced files under the log's samples folder are deleted
and rows whose sample is gone forget it.
Shadow mode (--shadow CANDIDATE for classify, serve and live): the candidate model runs on the same
preprocessed input as the serving model, on a second thread, and only its agreement, scores and latency
are logged (table `shadow`); what is answered, logged as a prediction and kept as a sample is the serving
model's alone. `shadow-report` summarises the table for `edgekit fleet rollout`'s gates.
`rows` (log rows after the ids the host already has, as JSON) and `samples` (named kept samples, as a tar
on stdout) are what `edgekit fleet pull` reads, a little at a time; both only read the logs.
Low-confidence inputs are kept under `samples/<database name>/` beside the database (each database owns
its folder, so two logs in one folder never delete each other's samples; rows of older runners name
`samples/<file>`, which is still read, never cleaned), within a disk budget, so
`edgekit feedback` can turn corrections into training data. Schema (schema_version 2; a version 1 log gains
the shadow table when it is opened):

  meta(key TEXT PRIMARY KEY, value)          -- 'schema_version', 'dropped_samples' (evicted or unsaved),
                                             -- 'trimmed_rows' (removed by the retention policy)
                                             -- 'db_id' (random: a replaced log is a new one)
  models(sha256 TEXT PRIMARY KEY, path TEXT, labels TEXT /* JSON list */, first_seen TEXT)
  predictions(id TEXT PRIMARY KEY /* uuid4 hex */, time TEXT /* UTC ISO 8601 */, model_sha256 TEXT,
              source TEXT /* image path or 'http' */, top_k TEXT /* JSON [{label, index, score}] */,
              latency TEXT /* JSON {preprocess, invoke, postprocess} in ms */,
              image_path TEXT /* sample file relative to the database, NULL if not kept */,
              image_bytes INTEGER)
  feedback(id INTEGER PRIMARY KEY AUTOINCREMENT, prediction_id TEXT REFERENCES predictions(id),
           label TEXT, time TEXT, source TEXT /* 'cli' or 'http' */)
  shadow(id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT /* UTC ISO 8601 */, tag TEXT /* --shadow-tag,
         e.g. a rollout id, '' if none */, model_sha256 TEXT /* serving */, candidate_sha256 TEXT,
         model_top INTEGER, candidate_top INTEGER /* top-1 output index */, agree INTEGER /* 0/1, NULL on
         error */, model_score REAL, candidate_score REAL, model_ms REAL, candidate_ms REAL /* invoke */,
         error TEXT /* the candidate's failure, NULL if it answered */)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import hashlib
import hmac
import io
import json
import os
import platform
import re
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

SCHEMA_VERSION = 2  # 2: the shadow table
RUNNER_VERSION = "1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # edgekit trains on these too
SAMPLE_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp",
                     "TIFF": "tif"}
RUNTIMES = ("litert", "tflite_runtime", "tf.lite")
VENV = "~/edgekit/venv"  # what `edgekit deploy`/`doctor` create on a device whose Python is externally managed
TFLRT_VENV = "~/edgekit/tflite-runtime-venv"  # tflite-runtime's own: it needs numpy<2
# pip requirements, Debian package (for a system Python under PEP 668) of what the runner may need
PACKAGES = {
    "litert": (("ai-edge-litert",), None),
    "tflite_runtime": (("tflite-runtime", "numpy<2"), None),
    "tf.lite": (("tensorflow",), None),
    "numpy": (("numpy",), "python3-numpy"),
    "pillow": (("pillow",), "python3-pil"),
    "opencv": (("opencv-python-headless",), "python3-opencv"),
    "picamera2": (("picamera2",), "python3-picamera2"),
    "simplejpeg": (("simplejpeg",), None),
}


def externally_managed() -> bool:
    """PEP 668: Debian 12 / Raspberry Pi OS bookworm refuse `pip install` into the system Python."""
    import sysconfig

    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    marker = os.path.join(sysconfig.get_paths().get("stdlib", ""), "EXTERNALLY-MANAGED")
    return not in_venv and os.path.isfile(marker)


def debian_python() -> bool:
    """The system Python is Debian's (PEP 668 marker), so apt's numpy, Pillow, OpenCV and Picamera2 fit it;
    true inside a venv made from it too, which sees them with --system-site-packages."""
    import sysconfig

    return os.path.isfile(os.path.join(sysconfig.get_paths().get("stdlib", ""), "EXTERNALLY-MANAGED"))


def shell_word(word: str) -> str:
    """`word` as a shell reads it back, leaving a leading ~/ unquoted so the shell still expands it."""
    import re
    import shlex

    return word if re.fullmatch(r"~?[\w@%+=:,./-]+", word) else shlex.quote(word)


def command_line(*argv: str) -> str:
    return " ".join(shell_word(word) for word in argv)


def system_numpy() -> str | None:
    """The numpy version the system (apt) provides, as seen from here: a venv's own numpy may hide it.

    Debian's python3-numpy is what apt's OpenCV and Picamera2 are built against; a pip-installed
    numpy 2 in a --system-site-packages venv shadows it and they fail with `_ARRAY_API not found`.
    """
    import glob

    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    for entry in sys.path:
        if not entry or (in_venv and os.path.abspath(entry).startswith(os.path.abspath(sys.prefix) + os.sep)):
            continue
        for info in sorted(glob.glob(os.path.join(entry, "numpy-*.*-info"))):
            version = os.path.basename(info)[len("numpy-"):].rsplit(".", 1)[0].split("-")[0]
            if version:
                return version
    return None if in_venv else getattr(np, "__version__", None)


def install_hints() -> dict:
    """Install commands per package that work for this very interpreter, PEP 668 included.

    Each value is one or more shell commands, one per line, that paste as they are: no prose, no
    trailing punctuation. The numpy already here is kept (pinned), since replacing it breaks what was
    built against it (apt's OpenCV; TensorFlow in the desktop's environment).
    """
    python = sys.executable or "python3"
    keep = system_numpy() or getattr(np, "__version__", None)
    pin = (f"numpy=={keep}",) if keep else ()
    hints = {}
    for name, (requirements, apt_name) in PACKAGES.items():
        if name == "litert":
            requirements = requirements + pin
        if name == "tflite_runtime" and needs_own_venv(keep):  # never downgrade numpy under TensorFlow
            hints[name] = "\n".join([command_line("python3", "-m", "venv", TFLRT_VENV),
                                     command_line(f"{TFLRT_VENV}/bin/python", "-m", "pip", "install",
                                                  *requirements, "pillow")])
        elif apt_name and (debian_python() or name == "picamera2"):  # Picamera2 needs apt's libcamera
            hints[name] = command_line("sudo", "apt", "install", apt_name)
        elif not externally_managed():
            hints[name] = command_line(python, "-m", "pip", "install", *requirements)
        else:  # pip only: a venv that still sees apt's numpy, Pillow and picamera2
            hints[name] = "\n".join([command_line("python3", "-m", "venv", "--system-site-packages", VENV),
                                     command_line(f"{VENV}/bin/python", "-m", "pip", "install", *requirements)])
    hints["edgetpu"] = command_line("sudo", "apt-get", "install", "libedgetpu1-std")
    return hints


def needs_own_venv(numpy_version: str | None) -> bool:
    """tflite-runtime needs numpy<2: where numpy 2 or TensorFlow lives, it goes into a venv of its own."""
    import importlib.util

    major = (numpy_version or "0").split(".")[0]
    return (major.isdigit() and int(major) >= 2) or importlib.util.find_spec("tensorflow") is not None


def inline(hint: str) -> str:
    """A hint inside a one-line message: its commands joined with && (still one pasteable line)."""
    return " && ".join(hint.splitlines())


INSTALL = install_hints()
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PROBE_REFUSED = 3  # _probe exit code: a Python error, which the parent may report as it is
SAMPLE_OUTPUTS = 8
OUTPUT_SAMPLE_VALUES = 4096  # raw output values kept per sample in a bench report

SHADOW_SCHEMA = (  # added in schema_version 2
    "CREATE TABLE IF NOT EXISTS shadow (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, "
    "tag TEXT NOT NULL, model_sha256 TEXT NOT NULL, candidate_sha256 TEXT NOT NULL, model_top INTEGER, "
    "candidate_top INTEGER, agree INTEGER, model_score REAL, candidate_score REAL, model_ms REAL, "
    "candidate_ms REAL, error TEXT)",
    "CREATE INDEX IF NOT EXISTS shadow_time ON shadow (time)",
)
SHADOW_QUEUE = 64  # inputs waiting for the candidate; a slower candidate then slows serving, never drops

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
    *SHADOW_SCHEMA,
    f"INSERT OR IGNORE INTO meta VALUES ('schema_version', {SCHEMA_VERSION})",
    "INSERT OR IGNORE INTO meta VALUES ('dropped_samples', 0)",
    "INSERT OR IGNORE INTO meta VALUES ('trimmed_rows', 0)",
    "INSERT OR IGNORE INTO meta VALUES ('db_id', lower(hex(randomblob(16))))",
)
TRIM_EVERY = 500  # rows between two retention passes


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
        raise RunnerError(f"numpy is not installed for {sys.executable}: {inline(INSTALL['numpy'])}")


def require_pillow() -> None:
    try:
        from PIL import Image
    except ImportError:
        raise RunnerError(f"Pillow is not installed for {sys.executable}: {inline(INSTALL['pillow'])}") from None
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
            raise RunnerError(f"--runtime {requested}: not installed for {sys.executable}: "
                              f"{inline(INSTALL[requested])}")
        return requested
    for name in RUNTIMES[:2]:
        try:
            import_runtime(name)
            return name
        except Exception:  # noqa: BLE001 - a broken install is as good as a missing one here
            continue
    if importlib.util.find_spec("tensorflow") is not None:
        return "tf.lite"
    raise RunnerError(f"no TFLite interpreter is installed for {sys.executable}: {inline(INSTALL['litert'])}")


def get_runtime(name: str) -> Runtime:
    try:
        return import_runtime(name)
    except RunnerError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise RunnerError(f"--runtime {name}: cannot be imported ({one_line(exc)}): {inline(INSTALL[name])}") \
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


# Native start-up chatter of TensorFlow and the interpreters, written by C++ straight to file descriptor 2.
NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]"  # absl/glog INFO and WARNING lines
    r"|E\d{4} [\d:.]+ +\d+ \S+:\d+\] (failed call to cuInit|Unable to register cu\w+ factory)"
    # the interpreter's own notices, not any "INFO: " line (edgekit's log lines start that way too)
    r"|INFO: (Created TensorFlow Lite|Initialized TensorFlow Lite|Replacing \d+ out of \d+ node)"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|oneDNN custom operations are on"
    r"|Attempting to register factory for plugin cu\w+"
    r"|Could not find cuda drivers on your machine)"
)


def is_noise(line: str) -> bool:
    return bool(NATIVE_NOISE.match(line.strip()))


@contextlib.contextmanager
def native_stderr_filtered():
    """Keep known native library noise off stderr for the duration; pass every other line on.

    It is written by C++ straight to file descriptor 2, below Python's logging, so only a redirect of that
    descriptor hides it: fd 2 goes to a scratch file, and on exit the lines that are not noise are replayed.
    edgekit wraps its TensorFlow import in this same filter.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (an embedded interpreter): stay as is
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if line.strip() and not is_noise(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def make_interpreter(runtime: Runtime, content: bytes, threads: int | None, delegates: list):
    with warnings.catch_warnings(), native_stderr_filtered():
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


def _metadata_color_space(meta: bytes, tensor) -> str | None:
    """TensorMetadata.content 3 → Content{properties_type 0 = ImageProperties 2, properties 1} → color_space 0."""
    content = _fb_sub(meta, tensor, 3)
    if content is None or _fb_scalar(meta, content, 0, "<B") != 2:
        return None
    properties = _fb_sub(meta, content, 1)
    space = 0 if properties is None else _fb_scalar(meta, properties, 0, "<b")
    return {1: "RGB", 2: "GRAYSCALE"}.get(space, "UNKNOWN")


def read_standard_metadata(content: bytes, path: str) -> dict:
    """What a model's standard metadata says: {} when it has none, else "name", "description", "version",
    "author", "min_parser_version", "color_space" and, when declared, "labels" and "mean"/"std".

    A stock model declares here how to feed it. Metadata that is present but unreadable is a RunnerError
    (edgekit raises the same): it may hold the input normalisation, and guessing would give wrong scores
    without a word. This is the one reader of it; edgekit imports it.
    """
    import struct

    meta = None
    try:
        meta = _metadata_buffer(content)
        if not meta:
            return {}
        if meta[4:8] != b"M001":
            raise ValueError("no 'M001' identifier")
        root = _fb_table(meta, _fb_unpack("<I", meta, 0))
        graphs = _fb_tables(meta, root, 3)  # ModelMetadata.subgraph_metadata
        inputs = _fb_tables(meta, graphs[0], 2) if graphs else []  # SubGraphMetadata.input_tensor_metadata
        outputs = _fb_tables(meta, graphs[0], 3) if graphs else []
        found = {key: _fb_text(meta, root, index) for key, index in
                 (("name", 0), ("description", 1), ("version", 2), ("author", 4), ("min_parser_version", 7))}
        found["color_space"] = _metadata_color_space(meta, inputs[0]) if inputs else None
        normalization = _metadata_normalization(meta, inputs[0]) if inputs else None
        if normalization:
            found["mean"], found["std"] = normalization
        labels = _metadata_labels(content, meta, outputs[0]) if outputs else None
        if labels:
            found["labels"] = labels
        return found
    except (IndexError, ValueError, TypeError, OverflowError, struct.error) as exc:  # a damaged flatbuffer
        what = "not TFLite Model Metadata" if meta and meta[4:8] != b"M001" else "damaged TFLite Model Metadata"
        raise RunnerError(f"{path}: its TFLITE_METADATA buffer is {what} ({one_line(exc)}); rewrite it with a "
                          "metadata writer (edgekit compress writes one)") from None


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

    shadow = None  # a Shadow running a candidate model beside this one (--shadow)

    def __init__(self, path: str, threads: int | None = None, delegate: str | None = None,
                 runtime: str | None = None, require_delegate: bool = True):
        content = self._read(path, threads, delegate)
        self.manifest = read_manifest(path, self.sha256)
        self.runtime, self.interpreter, self.load_ms = self._load(content, runtime, require_delegate)
        # Read once the interpreter accepted the file, so a damaged model is reported as that first.
        self.standard_metadata = read_standard_metadata(content, path)
        # Without an edgekit manifest, a model's standard metadata says how to normalise its input.
        found = self.standard_metadata
        self.normalization = None if self.manifest or "mean" not in found else (
            np.asarray(found["mean"], np.float32), np.asarray(found["std"], np.float32))
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.num_outputs = int(np.prod(self.output["shape"][1:]))
        self._check_input()
        self.pixel_range = self._manifest_field("pixel_range", [0, 255])
        self.lock = threading.Lock()

    def _read(self, path: str, threads: int | None, delegate: str | None) -> bytes:
        """The model's bytes (checked), with the identity every log row and report names."""
        require_numpy()
        self.path, self.threads, self.delegate, self.delegate_error = path, threads, delegate, None
        content = read_model(path)
        self.sha256 = hashlib.sha256(content).hexdigest()
        self.size_bytes = len(content)
        return content

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
                    raise RunnerError(f"--delegate {exc}; drop --delegate, or install the Edge TPU runtime (Coral apt "
                                      f"repository, https://coral.ai/software/): {INSTALL['edgetpu']}") from None
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
        return dequantize(raw, self.output)

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


def dequantize(raw, detail: dict):
    """float32 real values of a tensor's raw values; `detail` is the interpreter's (dtype, quantization).

    Raw values may come back as other numbers (a device's JSON report): the tensor's dtype decides.
    """
    scale, zero_point = detail["quantization"]
    raw = np.asarray(raw)
    if np.dtype(detail["dtype"]) in (np.uint8, np.int8, np.int16) and scale:
        return (raw.astype(np.float32) - zero_point) * np.float32(scale)
    return raw.astype(np.float32)


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


# EXIF orientation (tag 0x0112) → the Pillow transpose that shows the photo upright, as ImageOps.exif_transpose
ORIENTATIONS = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
                7: "TRANSVERSE", 8: "ROTATE_90"}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def jpeg_draft_scale(width: int, height: int, out_width: int, out_height: int) -> int:
    """The DCT-domain downscale (8, 4, 2 or 1) that keeps a JPEG at least as large as the model input.

    Decoding at 1/2 to 1/8 size in libjpeg's IDCT is what makes preprocessing cost little next to
    invoke(). edgekit.data picks tf.io.decode_jpeg(ratio=...) by this same rule, and libjpeg gives
    both the same pixels, so training sees what the device sees.
    """
    ratio = min(width // max(out_width, 1), height // max(out_height, 1))
    return next((scale for scale in (8, 4, 2) if ratio >= scale), 1)


def to_rgb8(image):
    """uint8 RGB pixels of a Pillow image; 16-bit greys keep their high byte (as tf.io does), not clip."""
    if image.mode in SIXTEEN_BIT_MODES:
        high = (np.clip(np.asarray(image), 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(high[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


@functools.lru_cache(maxsize=1)
def simplejpeg_module():
    """simplejpeg if installed (optional): libjpeg-turbo's TurboJPEG API without Pillow's image object."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def fast_jpeg(data: bytes, image, scale: int):
    """The JPEG's RGB pixels at 1/`scale` through simplejpeg, or None to let Pillow decode it.

    The same libjpeg-turbo work as Pillow's draft decode (accurate integer IDCT, fancy upsampling, the same
    DCT scale), so the same pixels, in about 0.8x the time at model sizes: on a 640x480 camera frame Pillow's
    image object and its copy into numpy cost ~0.2 ms next to ~1 ms of entropy decoding, which no decoder
    skips. Only plain YCbCr and greyscale JPEGs; CMYK, MPO and anything libjpeg-turbo warns about (corrupt
    data) stay with Pillow, which decodes them as it always has.
    """
    simplejpeg = simplejpeg_module()
    if simplejpeg is None or image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    want = (-(-image.size[1] // scale), -(-image.size[0] // scale))
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=want[0], min_width=want[1])
    except ValueError:
        return None
    return pixels if pixels.shape == (*want, 3) else None


def decode_image(data: bytes, max_pixels: int, size: tuple[int, int] | None = None):
    """RGB uint8 array of the first frame, upright by its EXIF orientation, and Pillow's format name.

    With `size` (height, width), JPEGs are decoded at the DCT scale jpeg_draft_scale picks; ImageError
    when the input is unusable.
    """
    from PIL import Image

    # Our own limit is checked on the header. Pillow's guard (2 x Image.MAX_IMAGE_PIXELS) stays on in
    # other processes that import this file; main() turns it off in the runner's own process.
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, "
                                    f"over the {max_pixels / 1e6:g} megapixel limit; shrink it or raise "
                                    "--max-megapixels")
            image.seek(0)
            orientation = image.getexif().get(0x0112, 1)
            pixels = None
            if size and image.format in ("JPEG", "MPO"):
                out_height, out_width = size[::-1] if orientation in (5, 6, 7, 8) else size
                scale = jpeg_draft_scale(width, height, out_width, out_height)
                pixels = fast_jpeg(data, image, scale)
                if pixels is None and scale > 1:
                    image.draft(image.mode, (out_width, out_height))
                    if image.size != (-(-width // scale), -(-height // scale)):
                        raise RunnerError(f"Pillow {Image.__version__} scaled a JPEG to {image.size}, not "
                                          f"1/{scale}; install the Pillow edgekit was tested with")
            if pixels is None:
                pixels = to_rgb8(image)
            if orientation in ORIENTATIONS:
                methods = getattr(Image, "Transpose", Image)  # Pillow < 9.1 (Debian 11) has no enum
                pixels = np.asarray(Image.fromarray(pixels).transpose(getattr(methods, ORIENTATIONS[orientation])))
            return pixels, image.format
    except (ImageError, RunnerError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image is over Pillow's decompression-bomb limit ({one_line(exc)}); shrink it") \
            from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad files
        reason = "unknown format" if type(exc).__name__ == "UnidentifiedImageError" else one_line(exc)
        raise ImageError(f"not a readable image ({reason})") from None


@functools.lru_cache(maxsize=64)
def _resize_axis(in_size: int, out_size: int):
    """Source indices and weights along one axis, computed in float32 as TensorFlow's kernel does.

    Cached: a camera or a model sees the same few sizes again and again.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    centres = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centres)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(centres), in_size - 1).astype(np.intp)
    return lower, upper, (centres - floor).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _resize_plan(in_height: int, in_width: int, height: int, width: int):
    """Everything resize_bilinear needs that depends only on the sizes, computed once per size pair."""
    y0, y1, wy = _resize_axis(in_height, height)
    x0, x1, wx = _resize_axis(in_width, width)
    rows = np.unique(np.concatenate([y0, y1]))  # the source rows any output row reads
    channels = np.arange(3)
    left, right = (((x * 3)[:, None] + channels).ravel() for x in (x0, x1))  # R, G, B of each pixel
    return (rows, np.searchsorted(rows, y0), np.searchsorted(rows, y1), wy[:, None], left, right,
            np.repeat(wx, 3))


def resize_bilinear(image, height: int, width: int):
    """float32 resize equal to tf.image.resize(bilinear, antialias=False): half-pixel centres, edge clamp.

    TensorFlow computes top = tl + (tr - tl) * wx, bottom likewise, then top + (bottom - top) * wy. The
    horizontal step is done once per source row that is used (not twice per output row), on rows flattened
    to width*3 values so numpy's inner loops are long; the float32 operations and their order are
    TensorFlow's, so the result is the same to the last bit.
    """
    if image.shape[:2] == (height, width):
        return image.astype(np.float32)
    rows, top, bottom, wy, left, right, wx = _resize_plan(image.shape[0], image.shape[1], height, width)
    flat = image.take(rows, axis=0).reshape(len(rows), -1)
    # In place: temporaries this size cost a fresh mmap and page faults each, more than the arithmetic.
    start = flat.take(left, axis=1).astype(np.float32)
    horizontal = flat.take(right, axis=1).astype(np.float32)
    np.subtract(horizontal, start, out=horizontal)
    np.multiply(horizontal, wx, out=horizontal)
    np.add(horizontal, start, out=horizontal)
    upper, lower = horizontal.take(top, axis=0), horizontal.take(bottom, axis=0)
    np.subtract(lower, upper, out=lower)
    np.multiply(lower, wy, out=lower)
    np.add(lower, upper, out=lower)
    return lower.reshape(height, width, 3)


def preprocess(model: Model, data: bytes, max_pixels: int):
    pixels, image_format = decode_image(data, max_pixels, (model.height, model.width))
    return model.to_input(resize_bilinear(pixels, model.height, model.width)), image_format


def top_k(scores, labels: list[str], k: int) -> list[dict]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"label": labels[i], "index": int(i), "score": float(scores[i])} for i in order]


def classify_bytes(model: Model, labels: list[str], data: bytes, k: int, max_pixels: int):
    """One image's result (top_k, latency_ms) and its format; ImageError for a bad image."""
    start = time.perf_counter()
    tensor, image_format = preprocess(model, data, max_pixels)
    return classify_tensor(model, labels, tensor, k, (time.perf_counter() - start) * 1e3), image_format


def classify_tensor(model: Model, labels: list[str], tensor, k: int, preprocess_ms: float) -> dict:
    raw, invoke_ms = model.run(tensor)
    start = time.perf_counter()
    scores = model.scores(raw)
    ranked = top_k(scores, labels, k)
    postprocess_ms = (time.perf_counter() - start) * 1e3
    if model.shadow is not None:
        model.shadow.submit(tensor, scores, invoke_ms)
    return {"top_k": ranked, "latency_ms": {"preprocess": preprocess_ms, "invoke": invoke_ms,
                                            "postprocess": postprocess_ms}}


def prefetched(items: list, work, depth: int = 2):
    """(item, future of work(item)) in order, with up to `depth` items worked on ahead in one thread.

    Pillow's decoder, numpy's resize and the interpreter's invoke() all release the GIL, so on a
    multi-core device the next image is decoded while this one is invoked: per image, a directory costs
    about max(preprocess, invoke) rather than their sum. Memory stays bounded by `depth` decoded images.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        queue = deque()
        for item in items:
            queue.append((item, pool.submit(work, item)))
            if len(queue) > depth:
                yield queue.popleft()
        while queue:
            yield queue.popleft()


def classify_files(model: Model, labels: list[str], logger, images: list[tuple[str, bool]], k: int,
                   max_pixels: int):
    """Each image's logged result (or its ImageError) in order, decoding ahead of invoke (prefetched)."""

    def prepare(item):
        start = time.perf_counter()
        data = read_image_file(item[0])
        tensor, image_format = preprocess(model, data, max_pixels)
        return data, tensor, image_format, (time.perf_counter() - start) * 1e3

    for (path, explicit), job in prefetched(images, prepare):
        try:
            data, tensor, image_format, preprocess_ms = job.result()
        except ImageError as exc:
            yield path, explicit, exc
            continue
        result = classify_tensor(model, labels, tensor, k, preprocess_ms)
        yield path, explicit, {"id": logger(os.path.abspath(path), result, data, image_format), "path": path,
                               **result}


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
                 sample_budget: int = 100 * 2**20, sync_interval: float = 0.0, keep_rows: int | None = None,
                 keep_days: float | None = None):
        self.path, self.busy_timeout, self.sample_budget = path, busy_timeout, sample_budget
        self.sync_interval, self.keep_rows, self.keep_days = sync_interval, keep_rows, keep_days
        self.directory = os.path.dirname(os.path.abspath(path))
        # This log's own samples folder, relative to its directory (see the module docstring).
        self.samples = "samples/" + (os.path.splitext(os.path.basename(path))[0] or "log")
        self.lock = threading.Lock()
        self.unsynced: list[str] = []  # sample files written since the last grouped sync
        self.inserted = 0
        self.syncer = None
        if not create and not os.path.isfile(path):
            raise RunnerError(f"{path}: no prediction log here; pass --db PATH (it is created beside the "
                              "model as edgekit_runner.db)")
        try:
            os.makedirs(self.directory, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: fsync per commit. NORMAL (grouped): a commit is in the OS cache, so it survives a kill
            # of this process at once, and the syncer thread makes it survive power loss within the interval.
            self.db.execute(f"PRAGMA synchronous={'NORMAL' if sync_interval > 0 else 'FULL'}")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._check_schema()
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from None

    def start_writing(self) -> dict:
        """For classify, serve and live: clean what kills left behind, trim, start the grouped syncer."""
        with self.transaction() as db:  # a log made by an older runner lacks the counter
            db.execute("INSERT OR IGNORE INTO meta VALUES ('trimmed_rows', 0)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('db_id', lower(hex(randomblob(16))))")
        cleaned = self.clean_samples()
        trimmed = self.trim()
        if self.sync_interval > 0:
            self.syncer = threading.Thread(target=self._sync_loop, name="log-sync", daemon=True)
            self.stopping = threading.Event()
            self.syncer.start()
        return {**cleaned, "trimmed_rows": trimmed}

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
        elif version == 1:  # version 2 only adds the shadow table
            with self.transaction() as db:
                for statement in SHADOW_SCHEMA:
                    db.execute(statement)
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
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
        self.inserted += 1
        if self.inserted % TRIM_EVERY == 0:
            self.trim()
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
        relative = f"{self.samples}/{prediction_id}.{ext}"
        try:
            path = os.path.join(self.directory, relative)
            if not os.path.isdir(os.path.dirname(path)):  # a new folder: its entry must survive a power cut too
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fsync_path(os.path.dirname(os.path.dirname(path)))
            write_file_durably(path, data, sync=self.sync_interval <= 0)
            if self.sync_interval > 0:
                self.unsynced.append(path)
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
                raise UnknownPrediction(f"prediction {clip(prediction_id)!r} is not in {self.path}; pass an id "
                                        "printed by classify or returned by /predict")
            labels = json.loads(row[0]) if row[0] else None
            if labels is not None and label not in labels:
                shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
                raise RunnerError(f"label {clip(label)!r} is not one of the model's labels ({shown})")
            cursor = db.execute("INSERT INTO feedback (prediction_id, label, time, source) "
                                "VALUES (?, ?, ?, ?)", (prediction_id, label, utc_now(), source))
            return cursor.lastrowid

    def dropped_samples(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT value FROM meta WHERE key = 'dropped_samples'").fetchone()[0])

    def trim(self) -> int:
        """Apply the retention policy: drop the oldest rows beyond --keep-rows and rows older than
        --keep-days, with their samples; rows with feedback are kept (they are training data). Counted in
        meta 'trimmed_rows'."""
        if not self.keep_rows and not self.keep_days:
            return 0
        free = "id NOT IN (SELECT prediction_id FROM feedback)"
        doomed = []
        with self.transaction() as db:
            if self.keep_days:
                cutoff = datetime.fromtimestamp(time.time() - self.keep_days * 86400, timezone.utc)
                doomed += db.execute(f"SELECT rowid, image_path FROM predictions WHERE time < ? AND {free}",
                                     (cutoff.isoformat(timespec="milliseconds"),)).fetchall()
            if self.keep_rows:
                excess = db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] - self.keep_rows
                if excess > 0:
                    doomed += db.execute(f"SELECT rowid, image_path FROM predictions WHERE {free} "
                                         "ORDER BY rowid LIMIT ?", (excess,)).fetchall()
            rowids = sorted({rowid for rowid, _ in doomed})
            for start in range(0, len(rowids), 500):
                chunk = rowids[start:start + 500]
                db.execute(f"DELETE FROM predictions WHERE rowid IN ({','.join('?' * len(chunk))})", chunk)
            if rowids:
                db.execute("UPDATE meta SET value = value + ? WHERE key = 'trimmed_rows'", (len(rowids),))
        for path in {path for _, path in doomed if path}:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.directory, path))
        return len(rowids)

    def clean_samples(self) -> dict:
        """Delete `*.tmp` and unreferenced files in this log's samples folder and forget samples that are
        gone: what a kill or a power cut between a sample's write and its row's commit leaves behind. The
        shared `samples/` of older runners is not cleaned: another database there may own its files.

        Runs under the write lock: every other writer writes its sample inside its own transaction, so
        nothing it holds can look orphaned here.
        """
        samples = os.path.join(self.directory, self.samples)
        removed = forgotten = 0
        with self.transaction() as db:
            referenced = {row[0] for row in db.execute("SELECT image_path FROM predictions "
                                                       "WHERE image_path IS NOT NULL")}
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(samples):
                    if f"{self.samples}/{name}" not in referenced:
                        with contextlib.suppress(OSError):
                            os.remove(os.path.join(samples, name))
                            removed += 1
            for relative in referenced:
                if not os.path.isfile(os.path.join(self.directory, relative)):
                    db.execute("UPDATE predictions SET image_path = NULL, image_bytes = NULL "
                               "WHERE image_path = ?", (relative,))
                    forgotten += 1
            self._add_dropped(db, forgotten)
        return {"orphan_samples_removed": removed, "missing_samples_forgotten": forgotten}

    def sync(self) -> None:
        """Make every committed row and kept sample durable: fsync the WAL, the samples and their folder."""
        with self.lock:
            pending, self.unsynced = self.unsynced, []
        for path in [f"{self.path}-wal", *pending]:
            fsync_path(path)
        if pending:
            fsync_path(os.path.dirname(pending[0]))

    def _sync_loop(self) -> None:
        while not self.stopping.wait(self.sync_interval):
            try:
                self.sync()
            except OSError as exc:  # a full or failing disk must not stop predictions
                warn(f"{self.path}: sync failed ({exc.strerror})")

    def counters(self) -> dict:
        with self.lock:
            rows = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN "
                                        "('dropped_samples', 'trimmed_rows')").fetchall())
        return {"dropped_samples": int(rows.get("dropped_samples", 0)),
                "trimmed_rows": int(rows.get("trimmed_rows", 0))}

    def close(self) -> None:
        if self.syncer is not None:
            self.stopping.set()
            self.syncer.join()
            self.syncer = None
        if self.sync_interval > 0:
            with contextlib.suppress(OSError):
                self.sync()
        self.db.close()


def fsync_path(path: str) -> None:
    """fsync a file or directory by name; one already gone (evicted, trimmed) needs nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: str, data: bytes, sync: bool = True) -> None:
    """Write to a temporary name, (fsync,) rename: a sample file is whole or absent. With `sync`, the file
    and then its directory are fsynced, so the rename itself survives a power cut. The temporary name is
    this writer's own: samples are named by content, and two writers (`serve`'s threads, a second runner on
    the same log) saving the same image must not rename each other's half-written file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if sync:
            fsync_path(os.path.dirname(path))
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
                        sample_budget=int(args.sample_budget_mb * 2**20), sync_interval=args.sync_interval,
                        keep_rows=args.keep_rows or None, keep_days=args.keep_days or None)
    log.register_model(model, labels)
    started = log.start_writing()
    if any(started.values()):
        warn(f"{log.path}: " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in started.items()
                                         if value))
    return log


class Logger:
    """Logs a classification and decides whether its input is kept as a sample."""

    def __init__(self, log: PredictionLog | None, model: Model, save_below: float, save_all: bool):
        self.log, self.model, self.save_below, self.save_all = log, model, save_below, save_all

    def __call__(self, source: str, result: dict, data, image_format: str | None) -> str | None:
        """`data` is the input's bytes, or a function making them (a video frame is encoded only if kept)."""
        if self.log is None:
            return None
        keep = self.save_all or result["top_k"][0]["score"] < self.save_below
        sample = (data() if callable(data) else data) if keep else None
        ext = SAMPLE_EXTENSIONS.get(image_format or "", "img")
        return self.log.log_prediction(self.model.sha256, source, result, sample, ext)


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
    if args.shadow:
        model.shadow = Shadow(args, model, logger.log)
    return model, labels, logger


def cmd_classify(args) -> int:
    images = list_images(args.inputs)
    model, labels, logger = load_for_classify(args)
    k, max_pixels = min(args.top_k, model.num_outputs), int(args.max_megapixels * 1e6)
    results = []
    for path, explicit, result in classify_files(model, labels, logger, images, k, max_pixels):
        if isinstance(result, ImageError):
            if explicit:
                raise RunnerError(f"{path}: {result}") from None
            warn(f"{path}: skipped, {result}")
            continue
        results.append(result)
        if not args.json:
            print_result(result)
    close_shadow(model)
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
# Shadow mode: a candidate model beside the serving one, measured but never answered


def input_pixels(model: Model, tensor):
    """Model.to_input undone: the float RGB 0..255 pixels a tensor was made from (to within one
    quantization step), so a candidate with another input type sees the same image."""
    pixels = tensor.astype(np.float32)
    if np.dtype(model.input["dtype"]) != np.float32:
        scale, zero_point = model.input["quantization"]
        pixels = (pixels - np.float32(zero_point)) * np.float32(scale)
    if model.normalization is not None:
        pixels = pixels * model.normalization[1] + model.normalization[0]
    low, high = model.pixel_range
    if (low, high) != (0.0, 255.0):
        pixels = (pixels - np.float32(low)) * np.float32(255.0 / (high - low))
    return pixels


class Shadow:
    """Runs --shadow CANDIDATE on every input the serving model classifies, in one background thread,
    and logs the comparison in the `shadow` table. The candidate's answer never reaches a client."""

    def __init__(self, args, serving: Model, log: PredictionLog | None):
        import queue

        if log is None:
            raise RunnerError("--shadow logs its comparisons in the prediction log; drop --no-log")
        candidate = Model(args.shadow, args.threads, args.delegate, args.runtime)
        check_classifier(candidate)
        if (candidate.height, candidate.width) != (serving.height, serving.width):
            raise RunnerError(f"--shadow {args.shadow}: input {candidate.height}x{candidate.width} differs from the "
                              f"serving model's {serving.height}x{serving.width}; a shadow must see the same input")
        if candidate.num_outputs != serving.num_outputs:
            raise RunnerError(f"--shadow {args.shadow}: {candidate.num_outputs} outputs, the serving model has "
                              f"{serving.num_outputs}; a shadow must classify into the same labels")
        same = (candidate.input["dtype"] == serving.input["dtype"]
                and tuple(candidate.input["quantization"]) == tuple(serving.input["quantization"])
                and candidate.pixel_range == serving.pixel_range
                and candidate.normalization is None and serving.normalization is None)
        self.convert = None if same else (lambda tensor: candidate.to_input(input_pixels(serving, tensor)))
        self.candidate, self.serving, self.log, self.tag = candidate, serving, log, args.shadow_tag or ""
        self.queue = queue.Queue(maxsize=SHADOW_QUEUE)
        self.thread = threading.Thread(target=self._work, name="shadow", daemon=True)
        self.thread.start()

    def submit(self, tensor, scores, invoke_ms: float) -> None:
        self.queue.put((tensor, int(np.argmax(scores)), float(np.max(scores)), invoke_ms))

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                self._compare(*item)
            except RunnerError as exc:  # the log is locked or full: serving goes on
                warn(f"--shadow: {exc}")

    def _compare(self, tensor, model_top: int, model_score: float, model_ms: float) -> None:
        row = {"candidate_top": None, "agree": None, "candidate_score": None, "candidate_ms": None, "error": None}
        try:
            raw, candidate_ms = self.candidate.run(tensor if self.convert is None else self.convert(tensor))
            scores = self.candidate.scores(raw)
            top = int(np.argmax(scores))
            row.update(candidate_top=top, agree=int(top == model_top), candidate_score=float(scores[top]),
                       candidate_ms=candidate_ms)
        except Exception as exc:  # noqa: BLE001 - a failing candidate is what shadow mode is there to catch
            row["error"] = one_line(exc)
        with self.log.transaction() as db:
            db.execute("INSERT INTO shadow (time, tag, model_sha256, candidate_sha256, model_top, candidate_top, "
                       "agree, model_score, candidate_score, model_ms, candidate_ms, error) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (utc_now(), self.tag, self.serving.sha256, self.candidate.sha256, model_top,
                        row["candidate_top"], row["agree"], model_score, row["candidate_score"], model_ms,
                        row["candidate_ms"], row["error"]))

    def close(self) -> None:
        """Compare what is still queued, then stop: a clean stop loses no comparison."""
        self.queue.put(None)
        self.thread.join()


def close_shadow(model: Model) -> None:
    if model.shadow is not None:
        model.shadow.close()
        model.shadow = None


def shadow_report(log: PredictionLog, since: str | None = None, tag: str | None = None) -> dict:
    """Agreement, errors, score shift and latency of the shadow rows since a time and/or with a tag."""
    where, params = ["1 = 1"], []
    if since:
        where.append("time >= ?")
        params.append(since)
    if tag is not None:
        where.append("tag = ?")
        params.append(tag)
    with log.lock:
        rows = log.db.execute("SELECT agree, model_score, candidate_score, model_ms, candidate_ms, error, "
                              "candidate_sha256, model_sha256, time FROM shadow WHERE " + " AND ".join(where)
                              + " ORDER BY id", params).fetchall()
    answered = [r for r in rows if r[5] is None]
    shifts = [r[2] - r[1] for r in answered]
    return {
        "db": log.path, "since": since, "tag": tag, "rows": len(rows), "errors": len(rows) - len(answered),
        "agreement": (sum(r[0] for r in answered) / len(answered)) if answered else None,
        "score_shift": (sum(shifts) / len(shifts)) if shifts else None,
        "model_ms": percentiles([r[3] for r in rows if r[3] is not None]),
        "candidate_ms": percentiles([r[4] for r in answered]),
        "candidates": sorted({r[6] for r in rows}), "models": sorted({r[7] for r in rows}),
        "first": rows[0][8] if rows else None, "last": rows[-1][8] if rows else None,
    }


def cmd_shadow_report(args) -> int:
    require_numpy()
    log = PredictionLog(db_path(args, None), args.busy_timeout, create=False)
    try:
        report = shadow_report(log, args.since, args.tag)
    finally:
        log.close()
    if args.json:
        print(json.dumps(report))
    else:
        agreement = "-" if report["agreement"] is None else f"{report['agreement']:.4f}"
        print(f"{report['rows']} shadow comparisons, {report['errors']} errors, agreement {agreement}, "
              f"candidate p90 {report['candidate_ms']['p90']} ms")
    return 0


# ---------------------------------------------------------------------------------------------------
# Subcommands: rows, samples (what `edgekit fleet pull` reads, a little at a time)

ROW_TABLES = ("predictions", "feedback", "shadow")  # shadow: the candidate's answers (fleet rollouts), if any
ROWS_LIMIT = 5000


def log_databases(extra: list) -> list:
    """Every model's log under models/*/ (as `edgekit deploy` lays them out) plus any --db given."""
    import glob

    found = sorted(glob.glob(os.path.join("models", "*", "edgekit_runner.db")))
    return found + [path for path in extra or [] if path not in found]


def log_identity(db, path: str) -> str:
    """Which database this is, so a host's cursor restarts when the file is replaced: meta 'db_id' (set
    when a runner starts writing), else the file's inode and creation time."""
    row = db.execute("SELECT value FROM meta WHERE key = 'db_id'").fetchone()
    if row and row[0]:
        return str(row[0])
    stat = os.stat(path)
    return f"inode-{stat.st_ino}-{int(stat.st_ctime)}"


def sample_digest(directory: str, relative) -> str | None:
    if not relative:
        return None
    try:
        with open(os.path.join(directory, relative), "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:  # evicted since the row was read
        return None


def model_records(db, path: str, known: set) -> list:
    """Models the host does not know yet, with the variant name and drift reference from their manifest."""
    out = []
    for sha, model_path, labels in db.execute("SELECT sha256, path, labels FROM models"):
        if sha in known:
            continue
        manifest = {}
        with contextlib.suppress(RunnerError, TypeError):
            manifest = read_manifest(model_path, sha) if model_path else {}
        out.append({"sha256": sha, "labels": json.loads(labels), "variant": manifest.get("name"),
                    "drift_reference": manifest.get("drift_reference")})
    return out


def read_rows(path: str, cursor: dict, known_models: set, limit: int) -> dict:
    """Rows after the cursor's ids, read-only: the host asks again while `more` is true."""
    directory = os.path.dirname(os.path.abspath(path))
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        out = {"path": path, "db_id": log_identity(db, path), "schema_version": int(version[0]) if version else None}
        if not out["schema_version"] or out["schema_version"] > SCHEMA_VERSION:  # the host reports it
            return out
        present = [(table, "id" if table == "feedback" else "rowid") for table in ROW_TABLES if table in tables]
        restart = cursor.get("db_id") != out["db_id"] or any(  # emptied and refilled: its ids start again
            db.execute(f"SELECT COALESCE(MAX({key}), 0) FROM {table}").fetchone()[0] < int(cursor.get(table, 0))
            for table, key in present)
        out["more"] = False
        for table, key in present:
            since = 0 if restart else int(cursor.get(table, 0))
            rows = db.execute(f"SELECT rowid AS _rowid, * FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?",
                              (since, limit)).fetchall()
            out[table] = [dict(row) for row in rows]
            out["more"] = out["more"] or len(rows) == limit
        for row in out["predictions"]:
            row["sample_sha256"] = sample_digest(directory, row["image_path"])
        out["restarted"] = restart
        out["models"] = model_records(db, path, known_models)
        samples = db.execute("SELECT COALESCE(SUM(image_bytes), 0), COUNT(image_path) FROM predictions").fetchone()
        out["disk"] = {"log_bytes": sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.isfile(p)),
                       "sample_bytes": int(samples[0]), "samples": int(samples[1])}
        return out
    finally:
        db.close()


def cmd_rows(args) -> int:
    try:
        request = json.loads(args.cursors) if args.cursors else {}
    except ValueError as exc:
        raise RunnerError(f"--cursors: not JSON ({one_line(exc)})") from None
    cursors, known = request.get("cursors", {}), set(request.get("known_models", []))
    logs = []
    for path in log_databases(args.db):
        try:
            logs.append(read_rows(path, cursors.get(path, {}), known, args.limit))
        except sqlite3.Error as exc:
            logs.append({"path": path, "error": one_line(exc)})
    print(json.dumps({"runner_version": RUNNER_VERSION, "schema_version": SCHEMA_VERSION, "logs": logs},
                     separators=(",", ":")))
    return 0


def cmd_samples(args) -> int:
    """Write the named samples of one log as a tar on stdout; only files under its samples/ folder."""
    import tarfile

    directory = os.path.realpath(os.path.dirname(os.path.abspath(args.db)))
    samples = os.path.join(directory, "samples")
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
        for relative in args.paths:
            path = os.path.realpath(os.path.join(directory, relative))
            if os.path.dirname(path) != samples or not os.path.isfile(path):
                continue  # evicted since, or not a sample: the host counts it as missing
            tar.add(path, arcname=relative, recursive=False)
    sys.stdout.buffer.flush()
    return 0


# ---------------------------------------------------------------------------------------------------
# Subcommand: serve


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def clip(text: str, limit: int = 80) -> str:
    """What a client sent, shortened before it is echoed back: a 60 KB label is not an error message."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class Latest:
    """The newest prediction (from /predict or the live input), for GET /latest."""

    def __init__(self):
        self.lock = threading.Lock()
        self.value = {"source": None, "time": None, "prediction": None}

    def set(self, source: str, prediction: dict) -> None:
        with self.lock:
            self.value = {"source": source, "time": utc_now(), "prediction": prediction}

    def get(self) -> dict:
        with self.lock:
            return dict(self.value)


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
        self.read_timeout = args.read_timeout
        self.stats = Stats()
        # Each decode may hold a 40 MP image (120 MB) plus Pillow's buffers: a Pi has room for a few.
        self.decodes = threading.BoundedSemaphore(args.max_decodes)
        self.latest = Latest()
        self.live_state = None  # serve --live: running, ended or failed


class Handler(BaseHTTPRequestHandler):
    server_version = "edgekit-runner/" + RUNNER_VERSION
    timeout = 30  # a client that stops sending must not hold a thread forever

    @property
    def app(self) -> App:
        return self.server.app

    def setup(self):
        self.timeout = self.server.app.read_timeout  # a client that stops sending must not hold a thread
        super().setup()

    def log_request(self, code="-", size="-"):
        """The access log names method, path and status only: a query string may carry a token, and the
        Authorization header is never logged."""
        path = (getattr(self, "path", None) or "-").split("?", 1)[0].split("#", 1)[0]
        self.log_message('"%s %s" %s %s', self.command or "-", clip(path), code, size)

    def log_error(self, format, *args):  # noqa: A002 - http.server's signature
        """http.server reports malformed request lines through here, quoting them: keep them out."""
        if format.startswith("code ") and args:
            self.log_message("bad request (status %s)", args[0])
        else:
            self.log_message(format, *args)

    def _public(self, text: str) -> str:
        """An error message for a client: host paths (the log, the model) reduced to their file names."""
        log = self.app.logger.log
        for path in sorted({os.path.abspath(p) for p in (log and log.path, self.app.model.path) if p},
                           key=len, reverse=True):
            text = text.replace(path, os.path.basename(path)).replace(os.path.dirname(path) + os.sep, "")
        return text

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._dispatch({"/health": self._health, "/stats": self._stats, "/latest": self._latest})

    def do_POST(self):  # noqa: N802
        self._dispatch({"/predict": self._predict, "/feedback": self._feedback})

    def _dispatch(self, routes: dict) -> None:
        started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        try:
            if path not in routes:
                raise HttpError(404, f"no endpoint {self.command} {clip(path)}; use POST /predict, POST "
                                "/feedback, GET /health, GET /stats or GET /latest")
            if path != "/health" and not self._authorized():
                raise HttpError(401, "send 'Authorization: Bearer <token>' with the server's token")
            self._send(200, routes[path](started))
        except HttpError as exc:
            self._send(exc.status, {"error": self._public(str(exc))}, exc.headers)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
            self.log_error("internal error: %s", one_line(exc))
            self._send(500, {"error": self._public(f"internal error ({one_line(exc)})")})

    def _authorized(self) -> bool:
        if self.app.token is None:
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        matches = hmac.compare_digest(given.strip().encode(), self.app.token.encode())
        return scheme.lower() == "bearer" and matches

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
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
            for name, value in (headers or {}).items():
                self.send_header(name, value)
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
        try:
            data = self.rfile.read(length) if length > 0 else b""
        except (socket.timeout, TimeoutError):  # noqa: UP041 - distinct classes on Python 3.9
            raise HttpError(408, f"the body stalled: nothing for {self.app.read_timeout:g} s "
                            "(--read-timeout); send it again") from None
        if len(data) != length:
            raise HttpError(400, f"body ended after {len(data)} of {length} bytes")
        return data

    def _health(self, started: float) -> dict:
        live = self.app.live_state
        # serve --live whose source failed (no OpenCV, camera gone) still answers /predict, but is not
        # what was asked for: a monitor must see that, not `ok`
        status = "degraded" if live and live.startswith("failed") else "ok"
        return {"status": status, **({"live": live} if live else {})}

    def _stats(self, started: float) -> dict:
        app = self.app
        log = app.logger.log
        return {**app.stats.snapshot(), "model_sha256": app.model.sha256,
                "runtime": {"name": app.model.runtime.name, "version": app.model.runtime.version},
                **(log.counters() if log else {"dropped_samples": None, "trimmed_rows": None})}

    def _latest(self, started: float) -> dict:
        return self.app.latest.get()

    def _predict(self, started: float) -> dict:
        app = self.app
        # Held from the first body byte to the answer: bodies and decoded images in memory are bounded.
        if not app.decodes.acquire(blocking=False):
            raise HttpError(503, "busy: every decode slot is in use (--max-decodes); retry shortly",
                            {"Retry-After": "1"})
        try:
            data = self._body(app.max_body)
            result, image_format = classify_bytes(app.model, app.labels, data, app.top_k, app.max_pixels)
        except ImageTooLarge as exc:
            raise HttpError(413, str(exc)) from None
        except ImageError as exc:
            raise HttpError(400, f"body is {exc}; POST the raw bytes of a JPEG, PNG, BMP, GIF or WebP") \
                from None
        finally:
            app.decodes.release()
        response = {"id": None, **result, "model_sha256": app.model.sha256}
        try:
            response["id"] = app.logger("http", result, data, image_format)
        except RunnerError as exc:  # the prediction is still good; say why it is not on record
            response["log_error"] = self._public(str(exc))
            self.log_error("%s", exc)
        request_ms = (time.perf_counter() - started) * 1e3
        response["latency_ms"] = {**result["latency_ms"], "request": request_ms}
        app.stats.add("predictions", result["latency_ms"]["invoke"], request_ms)
        app.latest.set("http", response)
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
        except UnknownPrediction:
            raise HttpError(404, f"prediction {clip(payload['id'])!r} is not in this server's log; pass an id "
                            "returned by /predict") from None
        except RunnerError as exc:
            raise HttpError(503 if "locked" in str(exc) else 400, str(exc)) from None
        self.app.stats.add("feedback")
        return {"ok": True, "feedback_id": feedback_id}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple, app: App, tls=None):
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        if tls is not None:
            # The handshake runs on the first read, in the handler's thread and under its read timeout:
            # a client that connects and stays silent must not stall accept() for everyone else.
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request, client_address):
        """A failed TLS handshake (a plain-HTTP client, a client that rejects the certificate) is one line."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # ssl.SSLError, a reset or timed-out connection
            print(f"edgekit_runner: {client_address[0]}: connection dropped ({type(exc).__name__}: "
                  f"{clip(getattr(exc, 'reason', None) or exc)})", file=sys.stderr, flush=True)
            return
        super().handle_error(request, client_address)


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


def tls_context(cert: str | None, key: str | None):
    """A server-side TLS 1.2+ context from --tls-cert/--tls-key, or None for plain HTTP.

    Errors are one line naming the file: a wrong path, a key that does not match the certificate.
    """
    if not cert and not key:
        return None
    try:
        import ssl  # here, not at the top: `doctor` must run on a Python built without OpenSSL
    except ImportError:
        raise RunnerError(f"{sys.executable} has no ssl module, so it cannot serve HTTPS; install a Python "
                          "built with OpenSSL") from None
    if not (cert and key):
        raise RunnerError("--tls-cert and --tls-key go together; pass both (a certificate and its private key)")
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not os.path.isfile(path):
            raise RunnerError(f"{option} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise RunnerError(f"--tls-cert {cert} --tls-key {key}: cannot load them ({reason}); pass a PEM "
                          "certificate and its matching private key") from None
    return context


def cmd_serve(args) -> int:
    token = read_token(args.token_file)
    if args.host not in LOCAL_HOSTS and token is None:
        raise RunnerError(f"--host {args.host}: serving beyond this machine needs a token; set "
                          "EDGEKIT_RUNNER_TOKEN or pass --token-file PATH (clients send 'Authorization: "
                          "Bearer <token>')")
    tls = tls_context(args.tls_cert, args.tls_key)
    if args.host not in LOCAL_HOSTS and tls is None:
        raise RunnerError(f"--host {args.host}: serving beyond this machine needs TLS, or the token crosses the "
                          "network in clear; pass --tls-cert CERT --tls-key KEY (`edgekit deploy --service serve "
                          "--tls` makes them), or bind 127.0.0.1")
    model, labels, logger = load_for_classify(args)
    try:
        server = Server((args.host, args.port), App(args, model, labels, logger, token), tls)
    except OSError as exc:
        raise RunnerError(f"--host {args.host} --port {args.port}: cannot listen ({exc.strerror or exc}); "
                          "pick another port or host") from None
    host, port = server.server_address[:2]
    # said before the live thread starts: its OpenCV import hides native stderr for a moment, and a line
    # printed by this thread in that moment was lost (clients wait for this one)
    print(f"edgekit_runner: serving {args.model} ({model.runtime.name} {model.runtime.version}) on "
          f"{'https' if tls else 'http'}://{host}:{port}  POST /predict, POST /feedback, GET /health, GET /stats, "
          "GET /latest"
          f"{'; live input ' + args.source if args.source else ''}", file=sys.stderr, flush=True)
    live = start_live_thread(args, server.app) if args.source else None
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if live:
            live.set()
        server.server_close()
        close_shadow(model)
        if logger.log:
            logger.log.close()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------------
# Subcommand: live (a camera, a video file, an RTSP/HTTP stream or a watched folder)

LOG_POLICIES = ("all", "change", "below")
WATCH_SKIP = (".tmp", ".part", ".partial", ".crdownload")
Frame = namedtuple("Frame", "source time_s pixels data")  # RGB uint8 pixels, or the encoded bytes of a file


def require_opencv():
    noise = io.StringIO()  # numpy 2 prints a warning and a traceback of its own before cv2 fails to import
    try:
        with contextlib.redirect_stderr(noise):
            import cv2
    except ImportError as exc:
        if exc.name == "cv2" or "No module named 'cv2'" in str(exc):
            raise RunnerError(f"OpenCV is not installed for {sys.executable}; cameras, video files and streams "
                              f"need it: {inline(INSTALL['opencv'])}") from None
        fix = numpy_fix()  # apt's OpenCV under a venv whose numpy 2 hides apt's numpy 1.x
        hidden = (f"; numpy {np.__version__} here hides the system's numpy {system_numpy()} it was built "
                  f"against: {fix}" if fix else "")
        raise RunnerError(f"OpenCV is installed for {sys.executable} but does not import ({one_line(exc)}){hidden}"
                          ) from None
    return cv2


class FrameGate:
    """Which frames to classify: every Nth, and at most `fps` per second of the source's own clock."""

    def __init__(self, every: int, fps: float | None):
        self.every, self.interval, self.count, self.next_time = every, 1.0 / fps if fps else 0.0, 0, None

    def __call__(self, time_s: float) -> bool:
        self.count += 1
        if (self.count - 1) % self.every:
            return False
        if self.interval and self.next_time is not None and time_s < self.next_time - 1e-6:
            return False
        self.next_time = time_s + self.interval
        return True


class OpenCvSource:
    """/dev/videoN or N, a video file, or an rtsp:// / http:// (MJPEG) URL, read through OpenCV.

    Frames not wanted are grab()bed but never decoded. Cameras and streams reconnect with back-off when
    they drop; a file ends at its last frame.
    """

    def __init__(self, spec: str):
        self.cv2, self.spec = require_opencv(), spec
        self.is_file = os.path.isfile(spec)
        self.capture = self._open()

    def _open(self):
        cv2 = self.cv2
        target = int(self.spec) if self.spec.isdigit() else self.spec
        timeouts = [getattr(cv2, name) for name in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC")
                    if hasattr(cv2, name)]
        if "://" in self.spec and timeouts:  # a stalled stream must not block the loop forever
            capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [v for t in timeouts for v in (t, 10000)])
        else:
            capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            capture.release()
            raise RunnerError(f"{self.spec}: OpenCV cannot open it; pass an existing video file, a camera "
                              "(/dev/video0 or 0; `v4l2-ctl --list-devices` lists them), or an rtsp:// or "
                              "http:// stream URL")
        return capture

    def frames(self, stop: threading.Event, gate: FrameGate):
        delay = 1.0
        while not stop.is_set():
            if not self.capture.grab():
                if self.is_file:
                    return
                warn(f"{self.spec}: no frame; reconnecting in {delay:g} s")
                self.capture.release()
                if stop.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
                with contextlib.suppress(RunnerError):
                    self.capture = self._open()
                continue
            delay = 1.0
            now = (self.capture.get(self.cv2.CAP_PROP_POS_MSEC) / 1e3 if self.is_file else time.monotonic())
            if gate(now):
                ok, bgr = self.capture.retrieve()
                if ok and bgr is not None and bgr.ndim == 3:
                    yield Frame(self.spec, now, np.ascontiguousarray(bgr[:, :, 2::-1]), None)

    def close(self) -> None:
        self.capture.release()


class PicameraSource:
    """The Raspberry Pi camera through Picamera2 (apt's python3-picamera2, seen by a --system-site-packages
    venv)."""

    def __init__(self, spec: str, size=(640, 480)):
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise RunnerError(f"{spec}: Picamera2 is not importable by {sys.executable}; sudo apt install "
                              f"python3-picamera2 (a venv needs --system-site-packages), or pass /dev/video0"
                              ) from None
        self.spec, self.camera = spec, Picamera2()
        # 'RGB888' is stored B, G, R in memory (libcamera's naming); reversed below.
        self.camera.configure(self.camera.create_video_configuration(main={"format": "RGB888", "size": size}))
        self.camera.start()

    def frames(self, stop: threading.Event, gate: FrameGate):
        while not stop.is_set():
            bgr = self.camera.capture_array("main")
            now = time.monotonic()
            if gate(now):
                yield Frame(self.spec, now, np.ascontiguousarray(bgr[:, :, 2::-1]), None)

    def close(self) -> None:
        self.camera.stop()
        self.camera.close()


class FolderSource:
    """New image files in a folder, each classified once its size has stopped changing; names ending
    .tmp/.part and dot files are left alone until they are renamed."""

    def __init__(self, spec: str, existing: bool, poll_s: float = 0.2):
        self.spec, self.poll_s = spec, poll_s
        self.seen = set() if existing else set(self._listing())
        self.sizes: dict[str, int] = {}

    def _listing(self) -> dict[str, int]:
        found = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.spec):
                name = entry.name.lower()
                if (entry.is_file() and not name.startswith(".") and name.endswith(IMAGE_EXTENSIONS)
                        and not name.endswith(WATCH_SKIP)):
                    found[entry.path] = entry.stat().st_size
        return found

    def frames(self, stop: threading.Event, gate: FrameGate):
        while not stop.is_set():
            listing = self._listing()
            self.seen &= set(listing)  # deleted files are forgotten, so memory stays bounded by the folder
            for path in sorted(set(listing) - self.seen):
                if stop.is_set():
                    return
                if self.sizes.get(path) != listing[path]:  # still being written: look again next poll
                    continue
                self.seen.add(path)
                if gate(time.monotonic()):
                    with contextlib.suppress(ImageError):
                        yield Frame(path, time.monotonic(), None, read_image_file(path))
            self.sizes = listing
            stop.wait(self.poll_s)

    def close(self) -> None:
        pass


def open_source(spec: str, existing: bool = False):
    if os.path.isdir(spec):
        return FolderSource(spec, existing)
    if spec in ("picamera2", "camera"):
        try:
            return PicameraSource(spec)
        except RunnerError:
            if spec == "picamera2":
                raise
            return OpenCvSource("0")  # `camera` without Picamera2: the first V4L2 camera
    return OpenCvSource(spec)


class LogPolicy:
    """Which live predictions are logged (and printed): all, on a change of top label, or below a score."""

    def __init__(self, mode: str, below: float):
        self.mode, self.below, self.last = mode, below, None

    def wants(self, result: dict) -> bool:
        best = result["top_k"][0]
        changed, self.last = best["label"] != self.last, best["label"]
        if self.mode == "change":
            return changed
        if self.mode == "below":
            return best["score"] < self.below
        return True


def encode_jpeg(pixels) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def prepare_frame(model: Model, frame: Frame, max_pixels: int):
    """(input tensor, sample bytes or a function making them, format, preprocess ms) for one frame;
    ImageError for a file that is not a readable image."""
    start = time.perf_counter()
    if frame.data is not None:
        tensor, image_format = preprocess(model, frame.data, max_pixels)
        return tensor, frame.data, image_format, (time.perf_counter() - start) * 1e3
    tensor = model.to_input(resize_bilinear(frame.pixels, model.height, model.width))
    return tensor, functools.partial(encode_jpeg, frame.pixels), "JPEG", (time.perf_counter() - start) * 1e3


_SOURCE_DONE = object()


def prepared_frames(source, stop: threading.Event, gate: FrameGate, model: Model, max_pixels: int):
    """(frame, prepared frame or its ImageError) in order, read and preprocessed one frame ahead.

    A second thread grabs and decodes the next frame (OpenCV, Picamera2 and Pillow release the GIL)
    while this one is invoked, so a frame costs about max(capture + preprocess, invoke), not their sum.
    Only that thread touches the source. One frame is buffered, so a camera's frame is at most one
    invoke old when its turn comes. Closing the generator (a frame or time limit) stops the thread.
    """
    import queue

    ahead: queue.Queue = queue.Queue(maxsize=1)
    halt = threading.Event()

    def offer(item) -> bool:
        while not halt.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                if stop.is_set():
                    halt.set()
        return False

    def produce():
        try:
            for frame in source.frames(halt, gate):
                try:
                    item = (frame, prepare_frame(model, frame, max_pixels))
                except ImageError as exc:
                    item = (frame, exc)
                if not offer(item):
                    return
            offer(_SOURCE_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            offer(exc)

    reader = threading.Thread(target=produce, name="live-reader", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = ahead.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if item is _SOURCE_DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        halt.set()
        reader.join()


def run_live(args, model: Model, labels: list[str], logger: Logger, stop: threading.Event, report=None,
             latest: Latest | None = None) -> dict:
    """Classify frames until the source ends, a limit is reached or `stop` is set; returns counts."""
    source = open_source(args.source, args.existing)
    gate, policy = FrameGate(args.every, args.fps), LogPolicy(args.log_policy, args.log_below)
    k, max_pixels = min(args.top_k, model.num_outputs), int(args.max_megapixels * 1e6)
    counts = {"source": args.source, "frames": 0, "logged": 0, "unreadable": 0}
    started = time.monotonic()
    frames = prepared_frames(source, stop, gate, model, max_pixels)
    try:
        for frame, prepared in frames:
            if isinstance(prepared, ImageError):
                warn(f"{frame.source}: skipped, {prepared}")
                counts["unreadable"] += 1
                continue
            tensor, sample, image_format, preprocess_ms = prepared
            result = classify_tensor(model, labels, tensor, k, preprocess_ms)
            counts["frames"] += 1
            prediction = {"id": None, "source": frame.source, "time_s": round(frame.time_s, 3), **result}
            if policy.wants(result):
                prediction["id"] = logger(frame.source, result, sample, image_format)
                counts["logged"] += 1
                if report:
                    report(prediction)
            if latest is not None:
                latest.set("live", prediction)
            elapsed = time.monotonic() - started
            if (stop.is_set() or (args.max_frames and counts["frames"] >= args.max_frames)
                    or (args.duration and elapsed >= args.duration)):
                break
    finally:
        frames.close()  # stops and joins the reader before the source is closed under it
        source.close()
    elapsed = time.monotonic() - started
    return {**counts, "seconds": round(elapsed, 3), "fps": round(counts["frames"] / elapsed, 2) if elapsed else None}


def print_live(as_json: bool):
    def report(prediction: dict) -> None:
        if as_json:
            print(json.dumps(prediction), flush=True)
        else:
            best = prediction["top_k"][0]
            print(f"{utc_now()}  {prediction['source']}  {best['label']} {best['score']:.4f}  id "
                  f"{prediction['id'] or '-'}", flush=True)

    return report


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (systemd stop, docker stop) and SIGINT finish the current frame, then close the log cleanly."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def cmd_live(args) -> int:
    if not os.path.isdir(args.source) and args.source not in ("picamera2", "camera"):
        require_opencv()  # before loading anything: the cheapest error first
    model, labels, logger = load_for_classify(args)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        summary = run_live(args, model, labels, logger, stop, print_live(args.json))
    finally:
        close_shadow(model)
        if logger.log:
            logger.log.close()
    print(f"edgekit_runner: live: {summary['frames']} frames from {summary['source']} in {summary['seconds']} s "
          f"({summary['fps']} fps), {summary['logged']} logged", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"summary": summary}), flush=True)
    return 0


def start_live_thread(args, app) -> threading.Event:
    """serve --live: the live loop in a thread sharing the model and log; GET /latest shows its result."""
    stop = threading.Event()
    app.live_state = "running"

    def loop():
        try:
            summary = run_live(args, app.model, app.labels, app.logger, stop, latest=app.latest)
            app.live_state = f"ended: {summary['frames']} frames"
        except RunnerError as exc:
            app.live_state = f"failed: {exc}"
            warn(f"--live {args.source}: {exc}")

    threading.Thread(target=loop, name="live", daemon=True).start()
    return stop



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
        content = self._read(path, threads, delegate)
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
    # Every input invoked since loading, in order, up to the last recorded output: a stateful model's
    # (a streaming wake-word model's) output depends on them all, so the host replays this sequence.
    sequence = [0]
    for i in range(args.warmup):
        model.run(inputs[(i + 1) % len(inputs)])
        sequence.append((i + 1) % len(inputs))
    latencies, outputs = [], []
    start = time.perf_counter()
    while len(latencies) < args.runs or time.perf_counter() - start < args.min_seconds:
        i = len(latencies) % len(inputs)
        raw, invoke_ms = model.run(inputs[i])
        latencies.append(invoke_ms)
        if len(outputs) < min(SAMPLE_OUTPUTS, len(inputs)) and len(latencies) <= len(inputs):
            outputs.append({"index": i, "position": len(sequence), "source": sources[i],
                            "argmax": int(np.argmax(raw)), "output": output_sample(raw)})
            sequence.append(i)
    wall = time.perf_counter() - start
    values = np.asarray(latencies)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    result.update(warmup=args.warmup, wall_s=wall, throughput_ips=len(values) / wall, latency_ms={
        "n": len(values), "mean": float(values.mean()), "std": float(values.std()), "p50": float(p50),
        "p90": float(p90), "p99": float(p99), "min": float(values.min()), "max": float(values.max())})
    result["outputs"], result["sequence"] = outputs, sequence
    if args.versus:
        result["versus"] = paired_rounds(args, model, inputs)


def paired_rounds(args, model: Model, inputs: list) -> dict:
    """Median invoke time per round for this model and `--versus` (a baseline), interleaved round by round.

    Two models timed in separate runs differ by the machine's drift between the runs (clock, cache, other
    load), which on a shared CPU is often larger than the difference between the models. Alternating short
    rounds (A B, then B A) exposes both to the same conditions, so the per-round ratios say how much of a
    difference is the model and how much is noise.
    """
    if bool(args.versus_images) == bool(args.versus_inputs):
        raise RunnerError("--versus needs exactly one of --versus-images or --versus-inputs")
    versus = argparse.Namespace(**{**vars(args), "model": args.versus, "images": args.versus_images,
                                   "inputs": args.versus_inputs})
    baseline, baseline_inputs, _ = load_bench_model(versus)
    for i in range(args.warmup):
        baseline.run(baseline_inputs[i % len(baseline_inputs)])
    per_round = max(5, -(-args.runs // args.rounds))
    timed = {"model": [], "versus": []}
    done = {"model": 0, "versus": 0}

    def one_round(which: str, runner: Model, tensors: list) -> float:
        times = []
        for _ in range(per_round):
            times.append(runner.run(tensors[done[which] % len(tensors)])[1])
            done[which] += 1
        return float(np.median(times))

    for r in range(args.rounds):
        order = [("model", model, inputs), ("versus", baseline, baseline_inputs)]
        for which, runner, tensors in order if r % 2 == 0 else order[::-1]:
            timed[which].append(one_round(which, runner, tensors))
    return {"model": args.versus, "model_sha256": baseline.sha256, "per_round": per_round,
            "rounds_ms": [[a, b] for a, b in zip(timed["model"], timed["versus"])]}


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


FEATURES = {"opencv": ("cv2", "cameras, video files and streams (live)"),
            "picamera2": ("picamera2", "the Raspberry Pi camera (live picamera)"),
            "simplejpeg": ("simplejpeg", "JPEG decoding in ~0.8x the time, same pixels (optional)")}


def probe_features() -> dict:
    """Import OpenCV, Picamera2 and simplejpeg in children, as the runner would: installed, absent, or broken.

    Broken is the case that matters: apt's OpenCV under a venv whose pip-installed numpy 2 hides apt's
    numpy 1.x fails with `_ARRAY_API not found`, which is not fixed by installing OpenCV again.
    """
    children = {name: subprocess.Popen([sys.executable, "-c", f"import {module}; print(getattr({module}, "
                                        f"'__version__', 'installed'))"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                for name, (module, _) in FEATURES.items()}
    found = {}
    for name, child in children.items():
        module, used_for = FEATURES[name]
        try:
            out, err = child.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        lines = out.strip().splitlines()
        tail = [line.strip() for line in err.splitlines() if line.strip()]
        error = None if child.returncode == 0 and lines else (tail[-1] if tail else f"exit code {child.returncode}")
        absent = error is not None and f"No module named '{module}'" in error
        found[name] = {"available": error is None, "version": lines[-1] if error is None else None,
                       "installed": not absent, "error": error, "used_for": used_for,
                       "install": INSTALL[name] if absent else numpy_fix()}
    return found


def numpy_fix() -> str | None:
    """The command that makes the system's numpy visible again where a venv's own numpy hides it."""
    system, here = system_numpy(), getattr(np, "__version__", None)
    if system and here and system != here:
        return command_line(sys.executable, "-m", "pip", "uninstall", "-y", "numpy")
    return None


def cmd_doctor(args) -> int:
    report = {"runner_version": RUNNER_VERSION, "executable": sys.executable, **device_info(), "pillow": None,
              "numpy_system": system_numpy(), "externally_managed": externally_managed()}
    with contextlib.suppress(ImportError):
        import PIL

        report["pillow"] = PIL.__version__
    report["runtimes"] = probe_runtimes()
    report["features"] = probe_features()
    usable = [r["name"] for r in report["runtimes"] if r["available"]]
    report["selected_runtime"] = usable[0] if usable else None
    report["edgetpu"] = probe_edgetpu(report["selected_runtime"])
    missing = [line for name in ("numpy", "pillow") if report[name] is None for line in INSTALL[name].splitlines()]
    if not usable:
        missing += INSTALL["litert"].splitlines()
    report["missing"] = missing  # shell commands, one per item, in order
    report["warnings"] = doctor_warnings(report)
    print(json.dumps(report, indent=2) if args.json else format_doctor(report))
    if missing:
        raise RunnerError(f"this device cannot run models yet; run: {' && '.join(missing)}")
    return 0


def doctor_warnings(report: dict) -> list:
    """Installed but broken: a feature that does not import, a venv numpy that hides the system's."""
    warnings = []
    if report["numpy_system"] and report["numpy"] and report["numpy_system"] != report["numpy"]:
        warnings.append(f"numpy {report['numpy']} in {sys.prefix} hides the system's numpy {report['numpy_system']} "
                        f"that apt's OpenCV and Picamera2 are built against; run: {numpy_fix()}")
    for name, feature in report["features"].items():
        if feature["installed"] and not feature["available"]:
            fix = f"; run: {feature['install']}" if feature["install"] else ""
            warnings.append(f"{name} is installed but does not import ({feature['error']}){fix}")
    return warnings


def format_doctor(report: dict) -> str:
    lines = [f"python          {report['python']} ({report['executable']})",
             f"machine         {report['system']} {report['machine']}, {report['cpu_count']} CPUs"
             f"{' (' + report['cpu_model'] + ')' if report['cpu_model'] else ''}, "
             f"{report['memory_total_mb'] or '?'} MB memory",
             f"numpy           {report['numpy'] or 'missing'}",
             f"pillow          {report['pillow'] or 'missing'}"]
    for runtime in report["runtimes"]:
        used = "  <- used" if runtime["name"] == report["selected_runtime"] else ""
        state = runtime["version"] if runtime["available"] else f"missing ({runtime['error']}), install with:"
        lines.append(f"{runtime['name']:<15} {state}{used}")
        lines += [] if runtime["available"] else [f"    {line}" for line in runtime["install"].splitlines()]
    for name, feature in report["features"].items():
        state = feature["version"] if feature["available"] else (
            f"broken ({feature['error']})" if feature["installed"] else f"not installed (for {feature['used_for']})")
        lines.append(f"{name:<15} {state}")
        lines += [] if feature["available"] or not feature["install"] else [
            f"    {line}" for line in feature["install"].splitlines()]
    edgetpu = report["edgetpu"]
    if edgetpu["loads"]:
        state = "Edge TPU found" if edgetpu["device"] else f"library loads, no Edge TPU ({edgetpu['error']})"
    else:
        state = f"missing ({edgetpu['error']}); from the Coral apt repository (https://coral.ai/software/):"
    lines.append(f"edgetpu         {state}")
    lines += [] if edgetpu["loads"] else [f"    {edgetpu['install']}"]
    if report["missing"]:
        lines += ["", "this device cannot run models yet; run these commands:"] + [
            f"    {line}" for line in report["missing"]]
    lines += [f"warning: {line}" for line in report["warnings"]]
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


def positive(kind, most=None):
    return non_negative(kind, most, above_zero=True)


def non_negative(kind, most=None, above_zero=False):
    """A number from 0 (or above it: `positive`) to `most`; nan and inf are never one a user means."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < 0 or (above_zero and value == 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be " + ("above zero" if above_zero else "0 or more"))
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {most:,}")
        return value

    return parse


def port_number(text: str) -> int:
    value = non_negative(int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port; use 1-65535, or 0 for a free one")
    return value


def byte_size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}
    number = text.rstrip("KMGBkmgb")
    unit = units.get(text[len(number):].upper())
    if unit is None:
        raise argparse.ArgumentTypeError(f"{text!r}: use bytes or a KB/MB/GB suffix")
    return int(positive(float)(number) * unit)


def add_model_options(parser) -> None:
    parser.add_argument("model", help="the .tflite file")
    parser.add_argument("--threads", type=positive(int, 256), help="interpreter threads (default: the runtime's)")
    parser.add_argument("--delegate", help="'edgetpu' (Coral) or the path of a delegate library")
    parser.add_argument("--runtime", choices=RUNTIMES, help="force an interpreter (default: first installed)")


def add_classify_options(parser) -> None:
    add_model_options(parser)
    parser.add_argument("--labels", help="labels file, one per line (default: labels.txt beside the model, "
                        "else manifest.json)")
    parser.add_argument("--top-k", type=positive(int, 1000), default=3, help="how many labels to report (3)")
    parser.add_argument("--max-megapixels", type=positive(float, 1000), default=40.0,
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
    parser.add_argument("--sync-interval", type=non_negative(float), default=1.0,
                        help="seconds between fsyncs of the log and samples: a row survives a kill at once and "
                        "a power cut after this long; 0 fsyncs every row before answering (1)")
    parser.add_argument("--keep-rows", type=non_negative(int), default=100_000,
                        help="keep at most this many predictions, oldest trimmed first, feedback kept; 0: all "
                        "(100000)")
    parser.add_argument("--keep-days", type=non_negative(float), default=0,
                        help="trim predictions older than this many days, feedback kept; 0: never (0)")
    parser.add_argument("--shadow", metavar="CANDIDATE", help="also run this .tflite on every input and log "
                        "how it compares (table shadow); its answers are never served")
    parser.add_argument("--shadow-tag", help="label the shadow rows, e.g. with a rollout id")


def add_live_options(parser) -> None:
    parser.add_argument("--fps", type=positive(float), help="classify at most this many frames per second of "
                        "the source (default: every frame)")
    parser.add_argument("--every", type=positive(int), default=1, help="classify every Nth frame (1)")
    parser.add_argument("--max-frames", type=non_negative(int), default=0, help="stop after N frames (0: never)")
    parser.add_argument("--duration", type=non_negative(float), default=0,
                        help="stop after this many seconds (0: never)")
    parser.add_argument("--log-policy", choices=LOG_POLICIES, default="change",
                        help="log every prediction, on a change of top label, or below --log-below (change)")
    parser.add_argument("--log-below", type=float, default=0.6, help="score for --log-policy below (0.6)")
    parser.add_argument("--existing", action="store_true",
                        help="a watched folder: also classify the files already in it")


def add_input_options(parser) -> None:
    parser.add_argument("--images", help="image classifiers: a directory of images, or .npz with x [N,H,W,3] "
                        "float pixels 0..255")
    parser.add_argument("--inputs", help="any model: .npz with input_0, input_1, ... each [N, *input shape] "
                        "in the input's own dtype")


def build_parser() -> Parser:
    parser = Parser(prog="python3 edgekit_runner.py", description=__doc__.split("\n", 2)[2],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(
        dest="command", metavar="{classify,serve,live,feedback,shadow-report,bench,predict,doctor}", required=True)

    classify = commands.add_parser("classify", help="classify images or directories of images",
                                   description="$ python3 edgekit_runner.py classify model.tflite photos/")
    add_classify_options(classify)
    classify.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    classify.add_argument("--json", action="store_true", help="print one JSON document")
    classify.set_defaults(func=cmd_classify)

    serve = commands.add_parser("serve", help="serve POST /predict over HTTP",
                                description="$ python3 edgekit_runner.py serve model.tflite --port 8080")
    add_classify_options(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (127.0.0.1); others need a token and --tls-cert/--tls-key")
    serve.add_argument("--port", type=port_number, default=8080, help="port (8080; 0 picks a free one)")
    serve.add_argument("--max-body-bytes", type=byte_size, default=10 * 2**20, help="largest upload (10MB)")
    serve.add_argument("--max-decodes", type=positive(int), default=2,
                       help="uploads read and decoded at once; more get 503 with Retry-After (2)")
    serve.add_argument("--read-timeout", type=positive(float), default=30.0,
                       help="seconds a stalled upload may send nothing before it gets 408 (30)")
    serve.add_argument("--token-file", help="file holding the bearer token (else $EDGEKIT_RUNNER_TOKEN)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (TLS 1.2+); needed beyond 127.0.0.1")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert (keep it mode 600)")
    serve.add_argument("--live", dest="source", metavar="SOURCE",
                       help="also classify a live input (as `live` does); GET /latest returns its newest result")
    add_live_options(serve)
    serve.set_defaults(func=cmd_serve)

    live = commands.add_parser("live", help="classify a camera, video file, stream URL or watched folder",
                               description="$ python3 edgekit_runner.py live model.tflite /dev/video0 --fps 5 "
                               "--log-policy change\n\nSOURCE: /dev/videoN or N (OpenCV), camera (Picamera2 if "
                               "importable, else /dev/video0), picamera2, a video file, an rtsp:// or http:// "
                               "(MJPEG) URL, or a folder watched for new images.",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_classify_options(live)
    live.add_argument("source", metavar="SOURCE")
    add_live_options(live)
    live.add_argument("--json", action="store_true", help="print one JSON line per reported prediction")
    live.set_defaults(func=cmd_live)

    feedback = commands.add_parser("feedback", help="record the correct label for a prediction",
                                   description="$ python3 edgekit_runner.py feedback 3f2a0c9e... cat")
    feedback.add_argument("id", help="prediction id printed by classify or returned by /predict")
    feedback.add_argument("label", help="the correct label, one of the model's labels")
    feedback.add_argument("--db", help="prediction log ($EDGEKIT_RUNNER_DB, else ./edgekit_runner.db)")
    feedback.add_argument("--busy-timeout", type=positive(float), default=5.0, help="seconds to wait (5)")
    feedback.set_defaults(func=cmd_feedback)

    report = commands.add_parser("shadow-report", help="summarise --shadow comparisons (JSON with --json)",
                                 description="$ python3 edgekit_runner.py shadow-report --db edgekit_runner.db "
                                 "--tag rollout-1 --json")
    report.add_argument("--db", help="prediction log ($EDGEKIT_RUNNER_DB, else ./edgekit_runner.db)")
    report.add_argument("--since", help="only comparisons at or after this UTC ISO 8601 time")
    report.add_argument("--tag", help="only comparisons with this --shadow-tag")
    report.add_argument("--busy-timeout", type=positive(float), default=5.0, help="seconds to wait (5)")
    report.add_argument("--json", action="store_true", help="print one JSON document")
    report.set_defaults(func=cmd_shadow_report)

    rows = commands.add_parser("rows", help="print log rows after the given ids as one JSON document",
                               description="$ python3 edgekit_runner.py rows --cursors '{\"cursors\": {}}' --json")
    rows.add_argument("--cursors", help='JSON {"cursors": {DB: {"db_id", "predictions", "feedback", "shadow"}}, '
                      '"known_models": [SHA256...]}; ids already read per log (default: none)')
    rows.add_argument("--db", action="append", help="a log besides models/*/edgekit_runner.db (repeatable)")
    rows.add_argument("--limit", type=positive(int), default=ROWS_LIMIT, help=f"rows per table ({ROWS_LIMIT})")
    rows.add_argument("--json", action="store_true", help="accepted for symmetry; the output is always JSON")
    rows.set_defaults(func=cmd_rows)

    samples = commands.add_parser("samples", help="write kept samples of one log as a tar on stdout",
                                  description="$ python3 edgekit_runner.py samples models/x/edgekit_runner.db "
                                  "samples/ab12.jpg > samples.tar")
    samples.add_argument("db", help="the log whose samples/ folder holds them")
    samples.add_argument("paths", nargs="*", help="sample paths as the log names them (samples/NAME)")
    samples.set_defaults(func=cmd_samples)

    bench = commands.add_parser("bench", help="measure load, first and steady-state inference latency",
                                description="$ python3 edgekit_runner.py bench model.tflite --images photos/")
    add_model_options(bench)
    add_input_options(bench)
    bench.add_argument("--runs", type=positive(int, 1_000_000), default=50, help="at least this many timed runs (50)")
    bench.add_argument("--warmup", type=non_negative(int, 100_000), default=5, help="untimed runs first (5)")
    bench.add_argument("--min-seconds", type=non_negative(float, 86_400), default=2.0,
                       help="and at least this long (2)")
    bench.add_argument("--max-images", type=positive(int, 100_000), default=64, help="inputs to cycle through (64)")
    bench.add_argument("--require-delegate", action="store_true", help="fail if --delegate cannot load")
    bench.add_argument("--versus", metavar="MODEL", help="a baseline model, timed in interleaved rounds with this one")
    bench.add_argument("--versus-images", metavar="NPZ_OR_DIR", help="the baseline's --images")
    bench.add_argument("--versus-inputs", metavar="NPZ", help="the baseline's --inputs")
    bench.add_argument("--rounds", type=positive(int), default=10, help="interleaved rounds with --versus (10)")
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
    with contextlib.suppress(ImportError):  # doctor runs where Pillow is missing
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # --max-megapixels is checked on each header instead, here only
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
