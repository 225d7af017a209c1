"""CLI misuse, table-driven: every case is one line on stderr, a non-zero exit, and nothing written.

Read-only and full disks are real: a tmpfs mounted read-only (or 1 MiB small) here, since the tests run as
root and permission bits would not stop root. Where mounting is not allowed, those cases are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgekit import manifests
from edgekit.cli import app

cli = CliRunner()


def _tree(*roots: Path) -> set[str]:
    found = set()
    for root in roots:
        if root.exists():
            found |= {str(p) for p in root.rglob("*")} | {str(root)}
    return found


def _one_line_failure(args: list[str], *watched: Path) -> str:
    before = _tree(*watched)
    result = cli.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    assert _tree(*watched) == before, "the failed command wrote files"
    return lines[-1]


@pytest.fixture
def unfinished_run(tmp_path) -> Path:
    run = tmp_path / "runs" / "half"
    run.mkdir(parents=True)
    (run / "train_config.json").write_text("{}")
    return run


CASES = [
    (["train", "--data", "{tmp}/missing"], "missing: no such data folder"),
    (["train", "--epochs", "0"], "--epochs 0: must be a whole number of epochs from 1"),
    (["train", "--data", "{tmp}/missing", "--weights", "imagenet"], "missing: no such data folder"),
    (["report", "{tmp}/nonexistent"], "nonexistent: no such directory"),
    (["report", "{tmp}"], "no manifest.json, so not an edgekit run directory"),
    (["report", "{unfinished}"], "half: no manifest.json, so not an edgekit run directory"),
    (["info", "{tmp}/missing"], "missing: no such file or directory"),
    (["info", "{tmp}"], "no manifest.json"),
    (["compress", "{run}", "--int8", "--threads", "0"], "--threads 0: must be a whole number of threads from 1"),
    (["compress", "{tmp}", "--int8"], "no manifest.json, so not an edgekit run directory"),
    (["compress", "{tmp}/variant", "--int8"], "is a variant artifact, not a run"),
    (["compress", "{run}", "--recipe", "{tmp}/evil.yaml"], "field 'name' must be letters"),
    (["compress", "{run}", "--recipe", "float16", "--float16"], "recipe name 'float16' is also used by"),
    (["eval", "{tmp}/nothing.tflite"], "nothing.tflite: no such model file or directory"),
    (["eval", "{tmp}/fake.tflite", "--data", "{tmp}"], "fake.tflite: not a TFLite model"),
    (["feedback", "import", "{tmp}/missing.db"], "missing.db: no such runner database"),
    (["devices", "show", "nope"], "unknown device 'nope'"),
    (["bench", "{run}", "--runs", "0"], "--runs 0: must be a whole number of timed runs from 1"),
    (["bench", "{run}", "--threads", "0"], "thread counts must be a whole number of threads from 1"),
    (["bench", "{run}", "--images", "{tmp}/no-images"], "no-images: must be an existing folder of images"),
    (["bench", "{run}", "--device", "nope"], "unknown device 'nope'"),
    (["recipes", "show", "int9"], "unknown recipe 'int9'"),
]


@pytest.mark.parametrize("args, expected", CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_misuse_is_one_line_and_writes_nothing(args, expected, tmp_path, tiny_run, unfinished_run, edgekit_home):
    (tmp_path / "evil.yaml").write_text("name: ../evil\nstages:\n  - type: convert\n")
    (tmp_path / "fake.tflite").write_bytes(b"not a model")
    (tmp_path / "variant").mkdir()
    manifests.write(tmp_path / "variant", manifests.VariantManifest(), [])
    args = [a.format(tmp=tmp_path, run=tiny_run, unfinished=unfinished_run) for a in args]
    line = _one_line_failure(args, tmp_path, tiny_run, edgekit_home)
    assert expected in line, line


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): read-only/full-disk cases need it")


def _fake_variant(directory: Path) -> None:
    """Enough of a variant for `report` to tabulate (no conversion needed)."""
    if directory.exists():  # the copied run already has real variants
        return
    directory.mkdir(parents=True)
    (directory / "model.tflite").write_bytes(b"stand-in")
    figures = manifests.Metrics(n=1, accuracy=1.0, macro_precision=1.0, macro_recall=1.0, macro_f1=1.0)
    manifests.write(directory, manifests.VariantManifest(
        name="float32", model=manifests.ModelContract(file="model.tflite", input_size=(32, 32, 3), labels=("a",)),
        tflite={"size": 8, "gzip_size": 8}, metrics=manifests.VariantMetrics(
            validation=figures, float_keras_accuracy=1.0, accuracy_delta_vs_float=0.0,
            output_abs_diff_vs_float=manifests.OutputDiff(0.0, 0.0, 1))), ["model.tflite"])


@pytest.fixture
def read_only_home(tmp_path, tiny_run, monkeypatch):
    """$EDGEKIT_HOME on a read-only filesystem that holds a finished run and a runner database."""
    home = tmp_path / "ro-home"
    _mount_tmpfs(home, "size=64m")
    try:
        shutil.copytree(tiny_run, home / "runs" / "tiny", ignore=shutil.ignore_patterns("bench", "eval-*"))
        _fake_variant(home / "runs" / "tiny" / "compressed" / "float32")
        subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
        monkeypatch.setenv("EDGEKIT_HOME", str(home))
        yield home
    finally:
        subprocess.run(["umount", "--lazy", str(home)], check=False)


@pytest.mark.parametrize("args, expected", [
    (["train", "--epochs", "1"], "Read-only file system"),
    (["compress", "{home}/runs/tiny", "--recipe", "dynamic-range"], "Read-only file system"),
    (["eval", "{home}/runs/tiny"], "Read-only file system"),
    (["report", "{home}/runs/tiny"], "Read-only file system"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_read_only_home_fails_before_the_work_in_one_line(args, expected, read_only_home):
    args = [a.format(home=read_only_home) for a in args]
    line = _one_line_failure(args, read_only_home)
    assert expected in line and str(read_only_home) in line, line


def test_read_only_home_refuses_a_feedback_import(read_only_home, tmp_path):
    import sqlite3

    db = tmp_path / "edgekit_runner.db"
    with sqlite3.connect(db) as conn:
        conn.executescript("CREATE TABLE predictions (id INTEGER, model_sha256 TEXT, top_k TEXT, image_path TEXT);"
                           "CREATE TABLE feedback (id INTEGER, prediction_id INTEGER, label TEXT, time TEXT);")
    line = _one_line_failure(["feedback", "import", str(db)], read_only_home)
    assert "Read-only file system" in line


@pytest.mark.slow
def test_full_disk_while_training_is_one_line_and_resumable(tmp_path, monkeypatch):
    runs = tmp_path / "small"
    _mount_tmpfs(runs, "size=1m")
    try:
        result = cli.invoke(app, ["train", "--epochs", "1", "--steps-per-epoch", "1", "--runs-dir", str(runs),
                                  "--name", "full"])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and lines[-1].startswith("error: "), result.output
        assert "no space left" in lines[-1].lower() or "No space left" in lines[-1], lines[-1]
        assert not (runs / "full" / "manifest.json").exists()
    finally:
        subprocess.run(["umount", "--lazy", str(runs)], check=False)  # TensorBoard may still hold a file
    assert os.path.isdir(tmp_path)
