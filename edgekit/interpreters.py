"""The one module that picks and loads a TFLite interpreter: LiteRT, then tflite_runtime, then tf.lite.

The runtime in use is reported with every measurement because it is part of what a latency (and, for
int8 models, an accuracy) means. Nothing here imports TensorFlow unless tf.lite is the runtime asked for,
so commands that only read or time `.tflite` files start in a fraction of a second.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.quiet import native_stderr_filtered
from edgekit.tflite import read_tflite


@dataclass(frozen=True)
class Runtime:
    """A TFLite interpreter implementation: its name, version and Interpreter class."""

    name: str
    version: str
    interpreter_class: type
    load_delegate: object | None


def _litert() -> Runtime:
    import ai_edge_litert
    from ai_edge_litert import interpreter as litert

    version = getattr(ai_edge_litert, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("ai-edge-litert")
    return Runtime("litert", version, litert.Interpreter, litert.load_delegate)


def _tflite_runtime() -> Runtime:
    import tflite_runtime
    from tflite_runtime import interpreter as tfl

    return Runtime("tflite_runtime", tflite_runtime.__version__, tfl.Interpreter, tfl.load_delegate)


def _tf_lite() -> Runtime:
    from edgekit.compat import tf

    return Runtime("tf.lite", tf.__version__, tf.lite.Interpreter, tf.lite.experimental.load_delegate)


_LOADERS = {"litert": _litert, "tflite_runtime": _tflite_runtime, "tf.lite": _tf_lite}
# Runtimes that raise a Python exception on a malformed flatbuffer. tf.lite 2.21 segfaults on a
# truncated file instead, so a file must pass a probe in a child process before it reaches one.
_SAFE_ON_BAD_FILES = {"litert"}


def available_runtimes() -> list[Runtime]:
    """Every interpreter implementation that imports here, in order of preference."""
    found = []
    for loader in _LOADERS.values():
        try:
            found.append(loader())
        except ImportError:
            continue
    return found


def get_runtime(name: str | None = None) -> Runtime:
    """The named runtime, or the first available one; a clear error when it is missing."""
    if name is None:  # the first that imports; later ones are not even tried (tf.lite means TensorFlow)
        for loader in _LOADERS.values():
            try:
                return loader()
            except ImportError:
                continue
        raise EdgekitError("no TFLite interpreter found: pip install ai-edge-litert")
    if name not in _LOADERS:
        raise EdgekitError(f"unknown runtime {name!r}: choose one of {', '.join(_LOADERS)}")
    try:
        return _LOADERS[name]()
    except ImportError as exc:
        raise EdgekitError(f"runtime {name!r} is not installed here ({exc})") from None


_PROBE = (
    "import sys, os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'\n"
    "from edgekit.interpreters import get_runtime\n"
    "rt = get_runtime(sys.argv[2])\n"
    "it = rt.interpreter_class(model_path=sys.argv[1]); it.allocate_tensors()\n"
)


def _probe_in_child(path: Path, runtime: Runtime) -> None:
    """Load the file in a throw-away process; a crash there costs us nothing."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), runtime.name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["crashed"])[-1]
        raise EdgekitError(
            f"{path}: the {runtime.name} interpreter cannot load this model ({last[:200]}); "
            "re-export it with `edgekit compress`"
        )


def load_interpreter(
    path: Path,
    *,
    num_threads: int | None = None,
    runtime: str | None = None,
    delegate: str | None = None,
):
    """Return `(interpreter, runtime)` for a .tflite file, with tensors allocated.

    Malformed files become an `EdgekitError` naming the file, never a crash of this process.
    """
    path = Path(path)
    content = read_tflite(path)
    rt = get_runtime(runtime)
    if rt.name not in _SAFE_ON_BAD_FILES:
        _probe_in_child(path, rt)
    delegates = None
    if delegate:
        try:
            delegates = [rt.load_delegate(delegate)]
        except (ValueError, OSError, RuntimeError) as exc:
            raise EdgekitError(f"delegate {delegate!r} failed to load: {exc}") from None
    try:
        with native_stderr_filtered():
            interpreter = rt.interpreter_class(
                model_content=content, num_threads=num_threads, experimental_delegates=delegates
            )
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"{path}: {rt.name} cannot load this model ({first[:200]})") from None
    return interpreter, rt
