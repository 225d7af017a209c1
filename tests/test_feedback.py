"""The way back: runner log on the device → import / pull → export → next training run."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from runner_models import LABELS, color_images, colour_tflite, write_variant
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.devices import runner_path

cli = CliRunner()


@pytest.fixture(scope="module")
def device_log(tmp_path_factory):
    """A deployed colour model whose runner logged 6 predictions (inputs kept) and 3 corrections."""
    root = tmp_path_factory.mktemp("device")
    model = write_variant(root / "models" / "abc123", colour_tflite())
    images, _ = color_images(6, seed=5)
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"in{i}.png")
    run = subprocess.run([sys.executable, str(runner_path()), "classify", str(model), str(root), "--save-all",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    ids = [result["id"] for result in json.loads(run.stdout)]
    corrections = {ids[0]: "blue", ids[1]: "blue", ids[2]: "green"}
    for prediction_id, label in corrections.items():
        done = subprocess.run([sys.executable, str(runner_path()), "feedback", prediction_id, label, "--db",
                               str(model.parent / "edgekit_runner.db")], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    return root, model.parent / "edgekit_runner.db", corrections


def test_import_snapshots_the_log_and_samples(device_log):
    _, db, corrections = device_log
    result = cli.invoke(app, ["feedback", "import", str(db), "--name", "pi1", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["predictions"] == 6 and payload["feedback"] == len(corrections)
    [imported] = payload["imports"]
    assert len(list((Path(imported) / "samples").rglob("*.*"))) == 6


def test_export_writes_a_class_folder_dataset_with_a_report(device_log, tmp_path):
    _, db, corrections = device_log
    assert cli.invoke(app, ["feedback", "import", str(db), "--name", "pi1"]).exit_code == 0
    out = tmp_path / "fb"
    result = cli.invoke(app, ["feedback", "export", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["written"] == 3 and report["per_class"] == {"blue": 2, "green": 1}
    assert sorted(p.parent.name for p in out.rglob("*.png")) == ["blue", "blue", "green"]
    assert {p.stem for p in out.rglob("*.png")} == set(corrections)
    assert (out / "feedback_report.md").read_text().startswith("# Feedback dataset")


@pytest.mark.slow
def test_next_training_run_folds_the_feedback_in(device_log, tmp_path):
    from edgekit.config import TrainConfig
    from edgekit.train import train

    _, db, _ = device_log
    assert cli.invoke(app, ["feedback", "import", str(db), "--name", "pi1"]).exit_code == 0
    feedback_dir = tmp_path / "fb"
    assert cli.invoke(app, ["feedback", "export", "--out", str(feedback_dir)]).exit_code == 0
    data = tmp_path / "colors"
    images, labels = color_images(30, seed=9)
    for i, (image, label) in enumerate(zip(images, labels)):
        (data / LABELS[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data / LABELS[label] / f"{i}.png")
    result = train(TrainConfig(data=str(data), extra_data=(str(feedback_dir),), image_size=32, weights="none",
                               epochs=1, batch_size=16, name="next", runs_dir=str(tmp_path / "runs")))
    extra = result.manifest.dataset.extra_data
    assert extra[0].path == str(feedback_dir.resolve()) and extra[0].n_files == 3
    assert result.manifest.dataset.split.train == 24 + 3


def test_import_of_a_file_that_is_not_a_runner_log(tmp_path):
    bogus = tmp_path / "x.db"
    sqlite3.connect(bogus).execute("CREATE TABLE t (a)").connection.commit()
    result = cli.invoke(app, ["feedback", "import", str(bogus)])
    assert result.exit_code == 1 and "x.db: not a runner database" in result.output


def test_export_without_imports_says_what_to_do(tmp_path):
    result = cli.invoke(app, ["feedback", "export", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "edgekit feedback import" in result.output


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    import sshd_fixture

    yield from sshd_fixture.serve(tmp_path_factory)


def test_pull_over_ssh_brings_the_device_log_back(sshd, tmp_path):
    """Deploy over SSH, classify and correct on the 'device', then `edgekit feedback pull`."""
    import yaml

    profile = tmp_path / "loopback.yaml"
    profile.write_text(yaml.safe_dump(sshd.profile(tmp_path / "device", python=sys.executable)))
    variant = write_variant(tmp_path / "variant", colour_tflite())
    deployed = cli.invoke(app, ["deploy", str(variant), "--device", str(profile), "--json"])
    assert deployed.exit_code == 0, deployed.output
    remote_model = json.loads(deployed.stdout)["model"]
    images, _ = color_images(2, seed=3)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "device" / f"cam{i}.png")
    run = subprocess.run([sys.executable, str(tmp_path / "device" / "edgekit_runner.py"), "classify", remote_model,
                          str(tmp_path / "device" / "cam0.png"), str(tmp_path / "device" / "cam1.png"), "--save-all",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    first = json.loads(run.stdout)[0]["id"]
    db = tmp_path / "device" / "models" / json.loads(deployed.stdout)["model_sha256"][:12] / "edgekit_runner.db"
    fixed = subprocess.run([sys.executable, str(tmp_path / "device" / "edgekit_runner.py"), "feedback", first,
                            "green", "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0, fixed.stderr
    pulled = cli.invoke(app, ["feedback", "pull", "--device", str(profile), "--name", "pi", "--json"])
    assert pulled.exit_code == 0, pulled.output
    payload = json.loads(pulled.stdout)
    assert payload["predictions"] == 2 and payload["feedback"] == 1
    out = tmp_path / "fb"
    assert cli.invoke(app, ["feedback", "export", "--out", str(out)]).exit_code == 0
    assert [p.parent.name for p in out.rglob("*.png")] == ["green"]
