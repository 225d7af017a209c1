"""What comes back from the field is a stranger's: model files that are programs, crafted device databases
and archives, credentials in access logs, and the faults (kills, shared folders) that corrupt what we keep.

Each test crafts the hostile input and asserts the one-line refusal and the absence of the effect
(no marker file written by model code, nothing written outside the output folder, no host file copied).
"""

from __future__ import annotations

import gzip
import json
import time
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgekit import manifests
from edgekit.cli import app

cli = CliRunner()


# ---------------------------------------------------------------------------------------------------
# Models are programs


def _lambda_model(marker: Path):
    """A tiny Keras model whose Lambda layer creates `marker` whenever the model is built (as on load)."""
    from edgekit.compat import keras

    payload = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")  # noqa: S307
    inputs = keras.Input(shape=(4, 4, 3))
    x = keras.layers.Lambda(payload, name="evil")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def evil_models(tmp_path_factory):
    """(folder, marker, evil.h5, evil.keras): both files run code that touches `marker` when rebuilt."""
    root = tmp_path_factory.mktemp("evil")
    marker = root / "PWNED"
    model = _lambda_model(marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "HDF5 is legacy": that is the point
        model.save(root / "evil.h5")
    model.save(root / "evil.keras")
    marker.unlink()
    return root, marker, root / "evil.h5", root / "evil.keras"


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    return lines[0]


def test_eval_refuses_a_legacy_h5_without_trust_and_runs_no_code(evil_models, tmp_path):
    _, marker, h5, _ = evil_models
    line = _one_line(cli.invoke(app, ["eval", str(h5), "--data", str(tmp_path), "--out", str(tmp_path / "o")]))
    assert "--trust-model" in line and "run code" in line and "evil.h5" in line
    assert not marker.exists()


def test_trust_model_does_load_the_h5_so_the_refusal_is_what_protects(evil_models):
    from edgekit.model import load_keras_model

    _, marker, h5, _ = evil_models
    load_keras_model(h5, trust=True)
    assert marker.exists()  # the crafted file really runs code; the refusal above is what stopped it
    marker.unlink()


def test_eval_loads_keras_files_in_safe_mode(evil_models, tmp_path):
    _, marker, _, keras_file = evil_models
    line = _one_line(cli.invoke(app, ["eval", str(keras_file), "--data", str(tmp_path),
                                      "--out", str(tmp_path / "o")]))
    assert "--trust-model" in line and "evil.keras" in line
    assert not marker.exists()


def test_savedmodel_folder_is_refused_without_trust(tmp_path):
    from edgekit.errors import EdgekitError
    from edgekit.model import load_keras_model

    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"\0")
    with pytest.raises(EdgekitError, match="SavedModel folder.*--trust-model"):
        load_keras_model(tmp_path / "saved")


def _copied_run(directory: Path, model_file: Path) -> Path:
    """A run folder whose manifest (with a correct sha256) names a legacy .h5 instead of model.keras."""
    directory.mkdir()
    (directory / "model.h5").write_bytes(model_file.read_bytes())
    contract = manifests.ModelContract(file="model.h5", input_size=(4, 4, 3), labels=("a", "b"))
    manifests.write(directory, manifests.RunManifest(name="copied", model=contract), ["model.h5"])
    return directory


def test_eval_of_a_run_whose_manifest_names_an_h5_is_refused(evil_models, tmp_path):
    _, marker, h5, _ = evil_models
    run = _copied_run(tmp_path / "run", h5)
    for extra in ([], ["--trust-model"]):  # trust is for a file the user names, not one a manifest points at
        line = _one_line(cli.invoke(app, ["eval", str(run), "--data", str(tmp_path), *extra]))
        assert "model.h5" in line and "model.keras" in line and "refusing" in line
    assert not marker.exists()


def test_data_check_run_features_refuse_a_run_naming_an_h5(evil_models, tmp_path):
    from edgekit.datacheck.labels import run_features
    from edgekit.errors import EdgekitError

    _, marker, h5, _ = evil_models
    run = _copied_run(tmp_path / "run", h5)
    with pytest.raises(EdgekitError, match="refusing to follow"):
        run_features(run, images=None)
    assert not marker.exists()


def test_compress_of_a_copied_run_with_code_in_its_model_keras_is_one_line(evil_models, tmp_path):
    _, marker, _, keras_file = evil_models
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(keras_file.read_bytes())
    contract = manifests.ModelContract(file="model.keras", input_size=(4, 4, 3), labels=("a", "b"))
    manifests.write(run, manifests.RunManifest(name="copied", model=contract), ["model.keras"])
    line = _one_line(cli.invoke(app, ["compress", str(run), "--recipe", "float32"]))
    assert "model.keras" in line and "--trust-model" in line
    assert not marker.exists()


def test_trust_model_option_is_on_every_command_that_loads_a_users_keras_model():
    for command in (["eval", "--help"], ["data", "check", "--help"], ["compress", "--help"]):
        assert "--trust-model" in cli.invoke(app, command).output


# ---------------------------------------------------------------------------------------------------
# Faults: a variant swap killed between its two renames


def _fake_variant(directory: Path, name: str, accuracy: float) -> None:
    directory.mkdir(parents=True)
    (directory / "model.tflite").write_bytes(b"tflite" + name.encode())
    metrics = manifests.Metrics(n=1, accuracy=accuracy, macro_precision=0, macro_recall=0, macro_f1=0)
    manifests.write(directory, manifests.VariantManifest(
        name=name, model=manifests.ModelContract(file="model.tflite", input_size=(4, 4, 3), labels=("a",)),
        tflite={"size": 6, "gzip_size": 6},
        metrics=manifests.VariantMetrics(validation=metrics, float_keras_accuracy=1, accuracy_delta_vs_float=0,
                                         output_abs_diff_vs_float=manifests.OutputDiff(0, 0, 1))),
        ["model.tflite"])


KILLED_SWAP = """
import os, sys
import gzip
import json
import time
import warnings
from pathlib import Path
from edgekit import artifacts
renames = []
real = Path.rename
def rename(self, target):
    if renames:  # the second rename of the swap: die the way SIGKILL would, with no cleanup
        os._exit(9)
    renames.append(target)
    return real(self, target)
Path.rename = rename
artifacts.replace_dir(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def _killed_swap(tmp_path: Path) -> Path:
    import os
    import subprocess
    import sys

    compressed = tmp_path / "run" / "compressed"
    _fake_variant(compressed / "int8", "int8", 0.5)
    _fake_variant(compressed / ".int8.tmp-1-x", "int8", 0.9)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(compressed / ".int8.tmp-1-x"),
                           str(compressed / "int8")], env=env, timeout=60)
    assert done.returncode == 9
    assert not (compressed / "int8").exists() and len(list(compressed.glob(".int8.old-*"))) == 1
    return tmp_path / "run"


def test_report_after_a_swap_killed_between_renames_lists_the_variant_once(tmp_path):
    from edgekit.report import variant_rows

    run = _killed_swap(tmp_path)
    rows = variant_rows(run)
    assert [r["variant"] for r in rows] == ["int8"] and rows[0]["accuracy"] == 0.5  # the old one, restored
    assert (run / "compressed" / "int8" / "manifest.json").is_file()
    assert not list((run / "compressed").glob(".int8.old-*"))


def test_swap_leftover_is_deleted_when_the_new_variant_is_in_place(tmp_path):
    from edgekit.artifacts import recover_swaps

    compressed = tmp_path / "compressed"
    _fake_variant(compressed / "int8", "int8", 0.9)
    _fake_variant(compressed / ".int8.old-999999999-1", "int8", 0.5)  # a dead process finished the swap
    assert recover_swaps(compressed) == [compressed / "int8"]
    assert [p.name for p in compressed.iterdir()] == ["int8"]


def test_dot_folders_are_never_listed_as_variants_or_runs(tmp_path):
    from edgekit.artifacts import latest_run
    from edgekit.bench.run import collect_variants
    from edgekit.report import variant_rows

    run = tmp_path / "runs" / "r1"
    _fake_variant(run / "compressed" / "int8", "int8", 0.5)
    _fake_variant(run / "compressed" / ".int8.tmp-999999999-x", "int8", 0.7)  # another compress, still writing
    contract = manifests.ModelContract(file="model.keras", input_size=(4, 4, 3), labels=("a",))
    manifests.write(run, manifests.RunManifest(name="r1", model=contract), [])
    hidden = tmp_path / "runs" / ".r2.tmp"
    hidden.mkdir()
    manifests.write(hidden, manifests.RunManifest(name="r2", model=contract), [])
    assert [r["variant"] for r in variant_rows(run)] == ["int8"]
    assert [m.path.parent.name for m in collect_variants([run])] == ["int8"]
    assert latest_run(tmp_path / "runs") == run


# ---------------------------------------------------------------------------------------------------
# A crafted runner database: labels, ids and sample paths are data


def _crafted_db(folder: Path, runner, rows, labels=("cat", "dog"), version: int | None = None) -> Path:
    """A runner database written by a hostile device: `rows` are (prediction id, label, image_path)."""
    import sqlite3

    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "edgekit_runner.db"
    conn = sqlite3.connect(db)
    for statement in runner.SCHEMA:
        conn.execute(statement)
    if version is not None:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    conn.execute("INSERT INTO models VALUES ('m', '/x', ?, 't')", (json.dumps(list(labels)),))
    for prediction_id, label, image_path in rows:
        conn.execute("INSERT INTO predictions VALUES (?, 't', 'm', 'cli', ?, '{}', ?, 1)",
                     (prediction_id, json.dumps([{"label": "cat", "score": 1.0}]), image_path))
        conn.execute("INSERT INTO feedback (prediction_id, label, time, source) VALUES (?, ?, 't', 'cli')",
                     (prediction_id, label))
    conn.commit()
    conn.close()
    return db


def _sample(folder: Path, name: str) -> str:
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "samples" / name).write_bytes(b"\x89PNG fake")
    return f"samples/{name}"


def test_export_refuses_labels_ids_and_paths_that_escape(runner, tmp_path):
    device = tmp_path / "device"
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host file")
    (device / "samples").mkdir(parents=True)
    (device / "samples" / "link.png").symlink_to(secret)
    rows = [("ok1", "dog", _sample(device, "ok1.png")),
            ("ok2", "../../escaped-label", _sample(device, "ok2.png")),
            ("../../escaped-id", "dog", _sample(device, "ok3.png")),
            ("abs", "dog", str(secret)),
            ("up", "dog", "../host-secret.txt"),
            ("link", "dog", "samples/link.png"),
            ("unknown", "horse", _sample(device, "ok4.png"))]
    db = _crafted_db(device, runner, rows)
    imported = cli.invoke(app, ["feedback", "import", str(db), "--name", "evil", "--json"])
    assert imported.exit_code == 0, imported.output
    out = tmp_path / "export" / "fb"
    result = cli.invoke(app, ["feedback", "export", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["written"] == 1 and report["per_class"] == {"dog": 1}
    assert report["refused"] == {"unknown_label": 1, "unsafe_id": 1, "unsafe_image_path": 2, "unsafe_label": 1}
    assert "refused 5 correction(s)" in result.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()
                     and "export" in p.parts)
    assert written == ["export/fb/dog/ok1.png", "export/fb/feedback_report.json", "export/fb/feedback_report.md",
                       "export/fb/manifest.json"]
    assert not list(tmp_path.rglob("escaped-*"))
    assert "host file" not in "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())


def test_import_copies_no_host_file_named_by_a_sample_path(runner, tmp_path, edgekit_home):
    device = tmp_path / "device"
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host file")
    (device / "samples").mkdir(parents=True)
    (device / "samples" / "link.png").symlink_to(secret)
    db = _crafted_db(device, runner, [("a", "dog", str(secret)), ("b", "dog", "samples/../../host-secret.txt"),
                                      ("c", "dog", "samples/link.png")])
    result = cli.invoke(app, ["feedback", "import", str(db), "--name", "evil"])
    assert result.exit_code == 0, result.output
    assert "3 sample path(s) refused" in result.stderr
    imported = edgekit_home / "feedback" / "evil"
    assert all("host file" not in p.read_text(errors="replace") for p in imported.rglob("*") if p.is_file())
    assert json.loads((imported / "manifest.json").read_text())["counts"]["samples_refused"] == 3


def test_import_of_a_database_from_a_newer_runner_is_one_line(runner, tmp_path):
    db = _crafted_db(tmp_path / "device", runner, [], version=99)
    line = _one_line(cli.invoke(app, ["feedback", "import", str(db)]))
    assert "schema_version 99" in line and "upgrade edgekit" in line


def test_import_leaves_no_wal_files_and_records_the_real_source(runner, tmp_path, edgekit_home):
    db = _crafted_db(tmp_path / "device", runner, [("a", "dog", None)])
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")  # as the runner keeps its log
    conn.close()
    assert cli.invoke(app, ["feedback", "import", str(db), "--name", "one"]).exit_code == 0
    imported = edgekit_home / "feedback" / "one"
    assert sorted(p.name for p in imported.iterdir()) == ["device.db", "manifest.json"]
    assert json.loads((imported / "manifest.json").read_text())["source"] == str(db.resolve())


def test_export_refuses_an_import_name_that_is_a_path(runner, tmp_path):
    db = _crafted_db(tmp_path / "device", runner, [])
    line = _one_line(cli.invoke(app, ["feedback", "import", str(db), "--name", "../../outside"]))
    assert "--name" in line
    assert not (tmp_path / "outside").exists()


# ---------------------------------------------------------------------------------------------------
# A crafted pull archive


def _tar(path: Path, entries) -> Path:
    """A tar with the given TarInfo kinds: ("file", name, bytes) or (tarfile type, name)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry[1])
            if entry[0] == "file":
                info.size = len(entry[2])
                tar.addfile(info, io.BytesIO(entry[2]))
            else:
                info.type = entry[0]
                if entry[0] == tarfile.CHRTYPE:
                    info.devmajor, info.devminor = 1, 5  # /dev/zero
                if entry[0] == tarfile.SYMTYPE:
                    info.linkname = "/etc/passwd"
                tar.addfile(info)
    return path


@pytest.fixture
def fake_device(tmp_path, edgekit_home, runner):
    """A local device profile whose 'python' hands back whatever archive the test left in its workdir,
    the way a compromised device would answer the pack step."""
    work = tmp_path / "work"
    work.mkdir()
    python = tmp_path / "fake-python"
    python.write_text("#!/bin/sh\necho '[\"m1\"]'\n")
    python.chmod(0o755)
    (edgekit_home / "devices").mkdir()
    (edgekit_home / "devices" / "evil.yaml").write_text(
        f"description: a device that lies\narch: any\nconnection: local\npython: {python}\nworkdir: {work}\n")
    device = tmp_path / "m1"
    db = _crafted_db(device, runner, [("a", "dog", _sample(device, "a.png"))])
    good = [("file", "m1/edgekit_runner.db", db.read_bytes()), ("file", "m1/samples/a.png", b"png")]
    return work, good


@pytest.mark.parametrize("kind", ["fifo", "chardev", "symlink"])
def test_pull_refuses_an_archive_with_anything_but_files_and_folders(fake_device, edgekit_home, kind):
    import tarfile

    work, good = fake_device
    bad = {"fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE, "symlink": tarfile.SYMTYPE}[kind]
    _tar(work / "feedback-pull.tar", [*good, (bad, "m1/samples/b.png"), (bad, "m1/samples/c.png")])
    line = _one_line(cli.invoke(app, ["feedback", "pull", "--device", "evil"]))
    assert "2 entries are not plain files or folders" in line and "nothing was imported" in line
    assert not (edgekit_home / "feedback").exists() or not any((edgekit_home / "feedback").iterdir())


def test_pull_refuses_an_archive_over_the_size_cap(fake_device, edgekit_home):
    work, good = fake_device
    _tar(work / "feedback-pull.tar", [*good, ("file", "m1/samples/big.png", b"\0" * (2 * 2**20))])
    line = _one_line(cli.invoke(app, ["feedback", "pull", "--device", "evil", "--max-size-mb", "1"]))
    assert "over the 1 MB limit" in line and "--max-size-mb" in line and "nothing fetched" in line
    bomb = work / "feedback-pull.tar"  # small on the wire, 2 MB unpacked: tarfile reads gzip transparently
    raw = _tar(work / "plain.tar", [*good, ("file", "m1/samples/big.png", b"\0" * (2 * 2**20))]).read_bytes()
    bomb.write_bytes(gzip.compress(raw))
    assert bomb.stat().st_size < 2**20
    line = _one_line(cli.invoke(app, ["feedback", "pull", "--device", "evil", "--max-size-mb", "1"]))
    assert "unpack to 2 MB, over the 1 MB limit" in line and "--max-size-mb" in line
    assert not (edgekit_home / "feedback").exists() or not any((edgekit_home / "feedback").iterdir())


def test_pull_of_a_plain_archive_records_the_device_path_as_source(fake_device, edgekit_home):
    work, good = fake_device
    _tar(work / "feedback-pull.tar", good)
    result = cli.invoke(app, ["feedback", "pull", "--device", "evil", "--name", "p", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((edgekit_home / "feedback" / "p-m1" / "manifest.json").read_text())
    assert manifest["source"] == f"evil:{work}/models/m1/edgekit_runner.db"
    assert manifest["counts"]["samples"] == 1


def test_pull_refuses_member_paths_that_climb_out(tmp_path):
    from edgekit.errors import EdgekitError
    from edgekit.untrusted import extract_archive

    archive = _tar(tmp_path / "a.tar", [("file", "../escaped", b"x"), ("file", "/abs", b"y")])
    with pytest.raises(EdgekitError, match="2 entries.*path outside the archive"):
        extract_archive(archive, tmp_path / "out", "pi", 2**20)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


def test_runner_schema_version_matches_what_feedback_reads():
    import re

    from edgekit.devices import runner_path
    from edgekit.untrusted import RUNNER_SCHEMA_VERSION

    found = re.search(r"^SCHEMA_VERSION = (\d+)", runner_path().read_text(), re.M)
    assert int(found.group(1)) == RUNNER_SCHEMA_VERSION


# ---------------------------------------------------------------------------------------------------
# The runner: credentials stay out of its access log, host paths out of its answers; samples per database

RESULT = {"top_k": [{"label": "red", "index": 0, "score": 0.1}], "latency_ms": {}}


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory) -> Path:
    import runner_models

    content = runner_models.colour_tflite()
    return runner_models.write_variant(tmp_path_factory.mktemp("model"), content)


def test_serve_logs_no_token_and_answers_no_host_path(tflite_model, tmp_path):
    import socket

    from test_runner import call, runner_env, served

    token = "Tok3n-in-the-header-0123456789"
    db = tmp_path / "private-folder" / "serve.db"
    env = runner_env(EDGEKIT_RUNNER_TOKEN=token)
    with served(tflite_model, tmp_path, "--db", db, env=env) as (_, port):
        assert call(port, "GET", "/stats?token=QuerySecret-1234567890", token=token)[0] == 200
        assert call(port, "GET", "/nowhere?access_token=QuerySecret-1234567890")[0] == 404
        status, body = call(port, "POST", "/feedback", json.dumps({"id": "feedbeef", "label": "red"}).encode(),
                            token=token)
        assert status == 404 and str(tmp_path) not in body["error"] and "feedbeef" in body["error"]
        raw = socket.create_connection(("127.0.0.1", port))
        raw.sendall(b"GET /x?token=QuerySecret-1234567890 HTTP/9.9\r\n\r\n")  # a malformed request line
        raw.recv(4096)
        raw.close()
        log = tmp_path / "serve.log"
        deadline = time.time() + 10
        while log.read_text().count('"GET /') < 2 and time.time() < deadline:
            time.sleep(0.05)
    text = log.read_text()
    assert '"GET /stats" 200' in text and '"GET /nowhere" 404' in text  # still an access log
    assert "QuerySecret" not in text and token not in text


def test_a_second_database_in_the_folder_keeps_the_first_ones_samples(runner, tmp_path):
    first = runner.PredictionLog(str(tmp_path / "a.db"))
    kept = first.log_prediction("sha", "x", RESULT, b"a" * 10, "jpg")
    first.close()
    second = runner.PredictionLog(str(tmp_path / "b.db"))  # what `classify --db b.db` opens
    assert second.start_writing()["orphan_samples_removed"] == 0
    second.close()
    [(image_path,)] = runner_rows(tmp_path / "a.db", "SELECT image_path FROM predictions WHERE id = ?", kept)
    assert image_path == f"samples/a/{kept}.jpg" and (tmp_path / image_path).read_bytes() == b"a" * 10


def test_samples_of_an_older_runner_in_the_shared_folder_are_read_and_never_cleaned(runner, tmp_path):
    import sqlite3

    old = runner.PredictionLog(str(tmp_path / "a.db"))
    row = old.log_prediction("sha", "x", RESULT, None)
    old.close()
    (tmp_path / "samples").mkdir(exist_ok=True)
    (tmp_path / "samples" / "legacy.jpg").write_bytes(b"old layout")
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE predictions SET image_path = 'samples/legacy.jpg', image_bytes = 10 WHERE id = ?", (row,))
    for name in ("b.db", "a.db"):
        log = runner.PredictionLog(str(tmp_path / name))
        assert log.start_writing()["orphan_samples_removed"] == 0
        log.close()
    assert (tmp_path / "samples" / "legacy.jpg").read_bytes() == b"old layout"
    assert runner_rows(tmp_path / "a.db", "SELECT image_path FROM predictions") == [("samples/legacy.jpg",)]


def runner_rows(db: Path, sql: str, *params) -> list:
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql, params).fetchall()


def test_export_of_rows_with_garbage_top_k_is_not_a_traceback(runner, tmp_path):
    import sqlite3

    device = tmp_path / "device"
    db = _crafted_db(device, runner, [("a", "dog", _sample(device, "a.png")), ("b", "dog", _sample(device, "b.png"))])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE predictions SET top_k = 'not json' WHERE id = 'a'")
        conn.execute("UPDATE predictions SET top_k = '[42]' WHERE id = 'b'")
    assert cli.invoke(app, ["feedback", "import", str(db), "--name", "g"]).exit_code == 0
    result = cli.invoke(app, ["feedback", "export", "--out", str(tmp_path / "fb"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"] == 2


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    import sshd_fixture

    yield from sshd_fixture.serve(tmp_path_factory)


def test_pull_over_ssh_of_an_endless_archive_stops_at_the_cap(sshd, tmp_path, edgekit_home):
    """The device answers the fetch with /dev/zero: the host takes at most the cap, then refuses."""
    import yaml

    work = tmp_path / "device"
    work.mkdir()
    (work / "feedback-pull.tar").symlink_to("/dev/zero")
    python = tmp_path / "fake-python"
    python.write_text("#!/bin/sh\necho '[\"m1\"]'\n")
    python.chmod(0o755)
    profile = tmp_path / "loopback.yaml"
    profile.write_text(yaml.safe_dump(sshd.profile(work, python=str(python))))
    started = time.time()
    line = _one_line(cli.invoke(app, ["feedback", "pull", "--device", str(profile), "--max-size-mb", "1"]))
    assert "over the 1 MB limit" in line and "nothing fetched" in line
    assert time.time() - started < 60
    assert not (edgekit_home / "feedback").exists() or not any((edgekit_home / "feedback").iterdir())


def test_local_fetch_refuses_a_device_node_or_an_oversized_file(fake_device):
    work, good = fake_device
    (work / "feedback-pull.tar").symlink_to("/dev/zero")
    line = _one_line(cli.invoke(app, ["feedback", "pull", "--device", "evil"]))
    assert "nothing to fetch" in line
    (work / "feedback-pull.tar").unlink()
    (work / "feedback-pull.tar").write_bytes(b"\0" * (2 * 2**20))
    line = _one_line(cli.invoke(app, ["feedback", "pull", "--device", "evil", "--max-size-mb", "1"]))
    assert "over the 1 MB limit" in line


def test_import_refuses_a_samples_folder_that_links_elsewhere(runner, tmp_path, edgekit_home):
    private = tmp_path / "home-ssh"
    private.mkdir()
    (private / "id_rsa").write_text("PRIVATE KEY")
    device = tmp_path / "device"
    db = _crafted_db(device, runner, [("a", "dog", "samples/id_rsa")])
    (device / "samples").symlink_to(private)
    result = cli.invoke(app, ["feedback", "import", str(db), "--name", "linked"])
    assert result.exit_code == 0, result.output
    assert "1 sample path(s) refused" in result.stderr
    imported = edgekit_home / "feedback" / "linked"
    assert all("PRIVATE KEY" not in p.read_text(errors="replace") for p in imported.rglob("*") if p.is_file())
