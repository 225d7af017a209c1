"""The CLI contract: help with examples, one-line errors, --json, eval and info on real runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgekit.cli import app

runner = CliRunner()


def _commands():
    """Every command path, sub-commands of groups included (e.g. ['feedback', 'pull'])."""
    paths = [[command.name or command.callback.__name__] for command in app.registered_commands]
    for group in app.registered_groups:
        paths.append([group.name])
        paths += [[group.name, sub.name or sub.callback.__name__] for sub in group.typer_instance.registered_commands]
    return sorted(paths)


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "$ edgekit" in result.output


def _one_line_error(result):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[-1]


def test_missing_data_folder_is_one_line(tmp_path):
    line = _one_line_error(runner.invoke(app, ["train", "--data", str(tmp_path / "nope")]))
    assert "nope: no such data folder" in line


def test_bad_image_size_is_one_line(tmp_path):
    line = _one_line_error(runner.invoke(app, ["train", "--image-size", "16"]))
    assert "--image-size 16" in line


def test_unknown_weights_is_one_line(digits_folder):
    line = _one_line_error(runner.invoke(app, ["train", "--data", str(digits_folder), "--weights", "imagenett"]))
    assert "--weights 'imagenett'" in line


@pytest.mark.slow
def test_eval_of_a_run_matches_its_manifest(tiny_run, tmp_path):
    result = runner.invoke(app, ["eval", str(tiny_run), "--out", str(tmp_path / "eval"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert payload["metrics"]["accuracy"] == pytest.approx(manifest["metrics"]["validation"]["accuracy"])
    assert set(payload["metrics"]) >= {"macro_precision", "macro_recall", "macro_f1", "per_class",
                                       "confusion_matrix"}
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    assert json.loads((tmp_path / "eval" / "manifest.json").read_text())["parent"]["sha256"] == \
        manifest["files"]["model.keras"]["sha256"]


@pytest.mark.slow
def test_eval_on_a_folder(tiny_run, digits_folder, tmp_path):
    result = runner.invoke(app, ["eval", str(tiny_run / "model.keras"), "--data", str(digits_folder), "--json",
                                 "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["n"] == 200


def test_eval_rejects_a_file_that_is_not_tflite(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"definitely not a flatbuffer")
    line = _one_line_error(runner.invoke(app, ["eval", str(bogus), "--data", str(tmp_path)]))
    assert "model.tflite: not a TFLite model" in line


def test_eval_rejects_a_tampered_run(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "model.keras").write_bytes(b"tampered")
    line = _one_line_error(runner.invoke(app, ["eval", str(copy)]))
    assert "model.keras: sha256" in line


def test_info_prints_the_manifest(tiny_run):
    human = runner.invoke(app, ["info", str(tiny_run)])
    assert human.exit_code == 0 and "run" in human.output and "labels (10)" in human.output
    machine = runner.invoke(app, ["info", str(tiny_run), "--json"])
    assert json.loads(machine.stdout)["kind"] == "run"


def test_info_on_a_plain_folder_is_one_line(tmp_path):
    line = _one_line_error(runner.invoke(app, ["info", str(tmp_path)]))
    assert "no manifest.json" in line



def test_info_on_a_stray_file_names_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    line = _one_line_error(runner.invoke(app, ["info", str(tmp_path / "notes.txt")]))
    assert line.startswith(f"error: {tmp_path / 'notes.txt'}: not a .tflite file")


def _subprocess(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _noise(stderr: str) -> list[str]:
    from edgekit.runner import is_noise

    return [line for line in stderr.splitlines() if is_noise(line) or re.search(r"absl|cuInit|cuda|oneDNN", line)]


@pytest.mark.slow
def test_train_json_keeps_progress_off_stdout_and_native_noise_off_stderr(tmp_path):
    result = _subprocess("train", "--epochs", "1", "--steps-per-epoch", "2", "--runs-dir", str(tmp_path),
                         "--name", "j", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert payload["run_dir"].endswith("/j") and 0 <= payload["validation"]["accuracy"] <= 1
    assert _noise(result.stderr) == [], result.stderr
    assert "train (scratch) epoch 1/1" in result.stderr  # progress is there, on stderr


@pytest.mark.slow
def test_tensorflow_commands_print_no_library_noise(tiny_run, tmp_path):
    for args in (["eval", str(tiny_run), "--out", str(tmp_path / "e")],
                 ["compress", str(tiny_run), "--recipe", "float32"]):
        result = _subprocess(*args)
        assert result.returncode == 0, result.stderr[-3000:]
        assert _noise(result.stderr) == [], (args, result.stderr)


def _edgekit_env(tmp_path, **extra) -> dict:
    """The environment a user has: no TF_CPP_MIN_LOG_LEVEL (conftest sets one for the test process)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, "EDGEKIT_HOME": str(tmp_path / "home"), **extra}


def _noisy_jpegs(folder, count: int = 3):
    """Noise-textured JPEGs (the entropy data a cut falls in), one per class folder entry."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(folder / cls / f"{i}.jpg",
                                                                                    quality=90)
    whole = (folder / "a" / "0.jpg").read_bytes()
    (folder / "a" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    return folder


@pytest.mark.slow
def test_truncated_jpeg_is_edgekits_own_line_not_libjpegs(tmp_path):
    folder = _noisy_jpegs(tmp_path / "photos")
    result = subprocess.run([sys.executable, "-m", "edgekit.cli", "data", "check", str(folder)], capture_output=True,
                            text=True, timeout=600, env=_edgekit_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Premature end" not in result.stderr and "JPEG data" not in result.stderr.replace("its JPEG data", "")
    assert not re.search(r"^[EWF]\d{4} ", result.stderr, re.M), result.stderr
    [line] = [line for line in result.stderr.splitlines() if "cut.jpg" in line]
    assert line.startswith("WARNING: skipped 1 file(s)") and "cut.jpg (is truncated: its JPEG data ends" in line


_EMITS_A_CPP_ERROR = """
import edgekit.compat
from edgekit.compat import tf
try:  # TensorFlow logs "E0000 ... jpeg_mem.cc ...] Premature end of JPEG data" through absl, then raises
    tf.io.decode_jpeg(open(__import__("sys").argv[1], "rb").read())
except tf.errors.InvalidArgumentError:
    print("raised")
"""


@pytest.mark.slow
def test_tensorflow_cpp_error_lines_are_quiet_unless_asked_for(tmp_path):
    """The mechanism that keeps absl ERROR lines (oneDNN/Grappler fallbacks in QAT, libjpeg) off stderr:
    TF_CPP_MIN_LOG_LEVEL=3 set before TensorFlow loads; a user's own setting (or --debug's 0) wins."""
    folder = _noisy_jpegs(tmp_path / "photos", count=1)
    command = [sys.executable, "-c", _EMITS_A_CPP_ERROR, str(folder / "a" / "cut.jpg")]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_edgekit_env(tmp_path))
    loud = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=_edgekit_env(tmp_path, TF_CPP_MIN_LOG_LEVEL="0"))
    assert quiet.stdout.strip() == loud.stdout.strip() == "raised", quiet.stderr + loud.stderr
    assert re.search(r"^E\d{4} .*Premature end of JPEG data", loud.stderr, re.M), loud.stderr  # the emitter works
    assert not re.search(r"^[EWIF]\d{4} ", quiet.stderr, re.M) and not _noise(quiet.stderr), quiet.stderr


def test_debug_asks_tensorflow_for_its_cpp_error_lines_unless_the_user_set_a_level(monkeypatch):
    import os

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert runner.invoke(app, ["--debug", "devices", "--json"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    assert runner.invoke(app, ["--debug", "devices", "--json"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


_NO_TF = """
import sys
tried = set()
class Watch:  # every attempt to import TensorFlow counts, also one that fails or is caught
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "tf_keras"):
            tried.add(name.partition(".")[0])
sys.meta_path.insert(0, Watch())
from typer.testing import CliRunner
from edgekit.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
loaded = sorted(tried | {name for name in ("tensorflow", "tf_keras") if name in sys.modules})
print(result.exit_code, ",".join(loaded) or "-")
print(result.output[-2000:])
"""


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["info", "RUN"], ["report", "RUN"], ["compress", "--int8", "--dry-run"],
    ["devices"], ["recipes"], ["recipes", "show", "int8-qat"], ["feedback", "--help"],
    ["doctor", "--device", "desktop"],
    ["info", "RUN/compressed/float32/model.tflite"],
    ["bench", "BARE", "--runs", "5", "--warmup", "1", "--min-seconds", "0.1", "--threads", "1"],
], ids=" ".join)
def test_commands_that_need_no_model_import_no_tensorflow(args, tiny_run, variants, tmp_path):
    import shutil

    bare = tmp_path / "bare.tflite"  # a model without a manifest: generated inputs, no dataset to load
    shutil.copyfile(variants["float32"] / "model.tflite", bare)
    args = [a.replace("RUN", str(tiny_run)).replace("BARE", str(bare)) for a in args]
    # A stand-in TensorFlow that fails to import: `doctor` probes tf.lite in a child, which would spend
    # seconds importing the real one; the host's attempts are caught by the script's import watch instead.
    (tmp_path / "stand-in" / "tensorflow").mkdir(parents=True)
    (tmp_path / "stand-in" / "tensorflow" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "stand-in"), os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", _NO_TF, *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": path})
    code, loaded = out.stdout.splitlines()[0].split()
    assert code == "0" and loaded == "-", out.stdout + out.stderr
    assert _noise(out.stderr) == []


def test_version_prints_the_package_version():
    from edgekit import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"edgekit {__version__}"


def test_devices_and_recipes_list_shipped_and_user_entries(edgekit_home):
    (edgekit_home / "devices").mkdir()
    (edgekit_home / "devices" / "lab.yaml").write_text("description: a lab box\narch: any\nconnection: local\n")
    (edgekit_home / "recipes").mkdir()
    (edgekit_home / "recipes" / "mine.yaml").write_text("name: mine\nstages:\n  - type: convert\n    mode: float16\n")
    devices = json.loads(runner.invoke(app, ["devices", "--json"]).stdout)["devices"]
    assert {"desktop", "rpi4", "lab"} <= {d["name"] for d in devices}
    recipes = {r["name"]: r for r in json.loads(runner.invoke(app, ["recipes", "--json"]).stdout)["recipes"]}
    assert recipes["int8-ptq"]["source"] == "shipped" and recipes["mine"]["source"].endswith("mine.yaml")
    shown = runner.invoke(app, ["recipes", "show", "mine"])
    assert shown.exit_code == 0 and "mode: float16" in shown.output


@pytest.mark.parametrize("command", [["recipes"], ["devices"]])
def test_listing_tables_fit_100_columns_unless_wide(command):
    narrow = runner.invoke(app, command)
    assert narrow.exit_code == 0, narrow.output
    assert max(map(len, narrow.stdout.splitlines())) <= 100
    wide = runner.invoke(app, [*command, "--wide"])
    assert max(map(len, wide.stdout.splitlines())) > 100  # the shipped descriptions and paths are long
    assert "…" not in wide.stdout and "--wide adds" not in wide.stdout


def test_bench_table_fits_a_terminal_and_keeps_the_columns_that_matter():
    from edgekit.bench.report import results_markdown
    from edgekit.bench.rows import BenchRow

    row = {"variant": "prune50-int8 (pareto)", "path": "m.tflite", "device": "rpi4", "runtime": "tflite_runtime",
           "runtime_version": "2.14.0", "delegate": "none", "threads": 4, "threads_requested": 4, "size": 812345,
           "accuracy": 0.9512, "device_accuracy": 0.9488, "status": "drift",
           "error": "tflite_runtime: outputs differ from LiteRT by up to 54 quantization steps (tolerance 1)",
           "latency_ms": {"mean": 12.3, "p50": 12.1, "p90": 13.0, "p99": 15.2, "min": 11.8, "max": 16.0, "n": 200},
           "throughput_ips": 81.2, "peak_rss_mb": 45, "load_ms": 12.5, "first_ms": 30.1}
    other = {**row, "variant": "float32", "status": "ok", "error": None, "device_accuracy": None}
    row, other = BenchRow.from_dict(row, "row"), BenchRow.from_dict(other, "other")
    narrow = results_markdown([row, other], 100)
    assert max(map(len, narrow.splitlines())) <= 100
    above, header = narrow.splitlines()[:2]
    assert above == "runtime: tflite_runtime 2.14.0"  # shared by every row: said once
    for kept in ("variant", "threads", "size", "acc host", "acc device", "p50", "p90", "status"):
        assert kept in header
    assert "prune50-int8 (pareto)" in narrow and "| drift " in narrow and "(--wide adds min, max" in narrow
    full = results_markdown([row, other])
    assert "p99" in full.splitlines()[0] and "54 quantization steps" in full  # results.md keeps everything
