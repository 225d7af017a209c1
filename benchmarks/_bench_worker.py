"""usage: PYTHON benchmarks/_bench_worker.py  (one JSON list of runner arguments per stdin line)

A long-lived `edgekit_runner.py bench --json`: each line is the argument list of one `bench` call,
answered with the JSON document that command prints. Keeping the process alive lets the benchmarks
interleave runtimes and variants without paying an import of TensorFlow per cell. It imports nothing
from edgekit, so it also runs under the tflite-runtime venv (numpy<2), which cannot hold edgekit.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import sys
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1] / "devices" / "edgekit_runner.py"


def load_runner():
    spec = importlib.util.spec_from_file_location("edgekit_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The runner loads every non-LiteRT model in a child process first, because tf.lite can segfault
    # on a damaged file. That check never touches the timed loop, and a child importing TensorFlow per
    # cell would dominate the suite's wall time, so here LiteRT's flatbuffer verifier does the check in
    # process when it is installed (it raises on a damaged file), else the child probe runs once per file.
    child_probe = functools.lru_cache(maxsize=None)(module.probe_in_child)

    def probe(path, runtime, delegate):
        try:
            verifier = module.import_runtime("litert")
        except Exception:  # noqa: BLE001 - no LiteRT here (the tflite-runtime venv)
            return child_probe(path, runtime, delegate)
        try:
            verifier.interpreter(model_path=path)
        except (ValueError, RuntimeError) as exc:
            raise module.RunnerError(f"{path}: fails LiteRT's verifier ({module.one_line(exc)})") from None

    module.probe_in_child = probe
    return module


def main() -> int:
    runner = load_runner()
    for line in sys.stdin:
        argv = [str(a) for a in json.loads(line)]
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            code = runner.main(argv)
        try:
            report = json.loads(captured.getvalue())
        except ValueError:
            report = {"error": f"runner exited with {code} and no JSON"}
        report["exit_code"] = code
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
