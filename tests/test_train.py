"""`edgekit train`: run directories, manifests, resume, distribution."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit import manifests
from edgekit.config import TrainConfig
from edgekit.errors import EdgekitError
from edgekit.manifests import RunManifest, verify_files
from edgekit.train import train


def test_run_directory_and_manifest(tiny_run):
    manifest = verify_files(tiny_run)
    assert isinstance(manifest, RunManifest) and manifest.schema_version == manifests.SCHEMA_VERSION
    assert set(manifest.files) >= {"model.keras", "labels.txt", "train_config.json", "history.csv"}
    model = manifest.model
    assert model.input_size == (32, 32, 3) and model.pixel_range == (0, 255)
    assert model.labels == tuple(str(i) for i in range(10))
    assert tuple((tiny_run / "labels.txt").read_text().split()) == model.labels
    assert manifest.dataset.source == "digits" and manifest.dataset.n_files == 1797
    assert len(manifest.dataset.fingerprint) == 64 and manifest.dataset.spec.image_size == 32
    assert manifest.config.seed == manifest.seed == 42
    assert manifest.versions["tensorflow"].startswith("2.21")
    assert manifest.training.epochs_run == 4 and manifest.training.throughput_images_per_s > 0
    validation = manifest.metrics.validation
    assert validation.n == 359 and 0.0 <= validation.accuracy <= 1.0
    assert list((tiny_run / "tensorboard").rglob("events.out.tfevents.*"))
    with open(tiny_run / "history.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert not list(tiny_run.glob(".*tmp-*")) and not (tiny_run / "backup").exists()


def test_finished_run_is_not_overwritten(tiny_run):
    with pytest.raises(EdgekitError, match=r"a finished run already exists"):
        train(TrainConfig(epochs=1, name=tiny_run.name, runs_dir=str(tiny_run.parent)))


def test_tampered_model_is_detected(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    with open(copy / "model.keras", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(EdgekitError, match=r"model.keras: sha256 .* does not match"):
        verify_files(copy)


@pytest.mark.slow
def test_folder_training_records_classes_and_fingerprint(digits_folder, tmp_path):
    result = train(TrainConfig(data=str(digits_folder), image_size=32, weights="none", epochs=1, batch_size=32,
                               name="folder", runs_dir=str(tmp_path)))
    manifest = result.manifest
    assert manifest.model.labels == tuple(str(i) for i in range(10))
    assert manifest.dataset.source == "folder" and manifest.dataset.n_files == 200
    assert manifest.config.augment.flip is True  # folders keep flips; only digits turn them off


def _cli(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_epoch(tmp_path):
    args = ["train", "--epochs", "6", "--name", "killed", "--runs-dir", str(tmp_path), "--steps-per-epoch", "5",
            "--patience", "20"]
    proc = _cli(*args, start_new_session=True)
    seen = []
    deadline = time.time() + 240
    for line in proc.stdout:
        seen.append(line)
        if "epoch 3/6" in line or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run = tmp_path / "killed"
    assert not (run / "manifest.json").exists() and (run / "backup").exists(), "".join(seen[-20:])
    out = subprocess.run([sys.executable, "-m", "edgekit.cli", "train", "--resume", str(run)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "epoch 1/6" not in out.stderr and "epoch 6/6" in out.stderr  # it picked up where it was killed
    manifest = manifests.read(run, RunManifest)
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(run / "history.csv"))]
    assert epochs[-1] == 5 and manifest.config.epochs == 6
    assert manifest.training.epochs_run == 6  # all epochs of the run's life, not just the resumed process's


def test_resume_of_a_finished_run_is_refused(tiny_run):
    with pytest.raises(EdgekitError, match=r"already finished"):
        train(TrainConfig(), resume=tiny_run)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_a_step_with_multiworker_mirrored_strategy(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_cli("train", "--strategy", "multiworker", "--epochs", "1", "--steps-per-epoch", "2",
                          "--batch-size", "32", "--name", "mw", "--runs-dir", str(tmp_path),
                          env={"TF_CONFIG": tf_config, "CUDA_VISIBLE_DEVICES": ""}))
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(o[-3000:] for o in outputs)
    manifest = manifests.read(Path(tmp_path) / "mw", RunManifest)
    assert manifest.hardware.strategy.startswith("multiworker")
    assert manifest.hardware.replicas == 2
    assert not list(Path(tmp_path).glob("mw-*"))  # the non-chief wrote nothing beside the chief


@pytest.mark.slow
def test_default_training_reaches_95_percent_on_digits(tmp_path):
    """The README's promise: `edgekit train` with defaults, offline, >= 95% in minutes."""
    result = train(TrainConfig(name="default", runs_dir=str(tmp_path)))
    assert result.manifest.metrics.validation.accuracy >= 0.95


@pytest.mark.slow
def test_transfer_learning_freezes_the_body_then_fine_tunes_its_top(digits_folder, tmp_path):
    """Pretrained weights from a file: phase 1 trains only the head, phase 2 the body from layer 100 on."""
    import numpy as np

    from edgekit.compat import keras
    from edgekit.model import ModelSpec, build_classifier

    body = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    weights = tmp_path / "pretrained_no_top.h5"
    body.save_weights(str(weights))
    result = train(TrainConfig(data=str(digits_folder), image_size=32, weights=str(weights), epochs=1,
                               fine_tune_epochs=1, fine_tune_at=100, batch_size=32, name="tl",
                               runs_dir=str(tmp_path / "runs"), augment=TrainConfig().augment))
    assert result.manifest.training.epochs_run == 2
    trained = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    reference = build_classifier(ModelSpec(10, 32), weights=str(weights))
    early, late = "Conv1", "block_16_project"
    np.testing.assert_array_equal(trained.get_layer(early).get_weights()[0],
                                  reference.get_layer(early).get_weights()[0])
    assert not np.array_equal(trained.get_layer(late).get_weights()[0], reference.get_layer(late).get_weights()[0])
    bn = "block_16_project_BN"  # batch norm stays frozen while fine-tuning
    np.testing.assert_array_equal(trained.get_layer(bn).get_weights()[2], reference.get_layer(bn).get_weights()[2])


@pytest.mark.slow
def test_mixed_precision_run_exports_a_float32_model(tmp_path):
    """What a GPU run does (mixed_float16, float32 softmax), forced on the CPU for one step."""
    from edgekit.compat import keras

    result = train(TrainConfig(epochs=1, steps_per_epoch=1, mixed_precision="on", name="mp",
                               runs_dir=str(tmp_path)))
    assert result.manifest.hardware.mixed_precision is True
    model = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing leaks into later work
