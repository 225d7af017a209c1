"""Tests for the standalone on-device runner, devices/edgekit_runner.py, on tiny colour models.

The CLI is exercised as a subprocess, exactly as a Raspberry Pi runs it; pure functions are tested on
the module imported from its file. Reference answers come from TensorFlow and LiteRT in this process.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import http.client
import io
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import runner_models  # noqa: E402

RUNNER = Path(__file__).resolve().parents[1] / "edgekit" / "resources" / "devices" / "edgekit_runner.py"
TOKEN = "test-token-0123456789abcdef"


# ---------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="session")
def tf():
    tf, _ = runner_models._keras()
    return tf


@pytest.fixture(scope="session")
def models(tmp_path_factory, tf):
    """float32, uint8-in/out and int8-in/out variants, each in its own directory with manifest + labels."""
    root = tmp_path_factory.mktemp("models")
    return {kind: runner_models.write_variant(root / kind, runner_models.colour_tflite(quantize))
            for kind, quantize in (("float32", None), ("uint8", "uint8"), ("int8", "int8"))}


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """Colour images of several sizes and formats, named <label>_<n>.<ext>: up-, down- and no scaling."""
    directory = tmp_path_factory.mktemp("images")
    specs = [((50, 70), "png"), ((32, 32), "png"), ((20, 13), "bmp"), ((64, 48), "jpg"), ((33, 31), "webp"),
             ((40, 40), "gif")]
    for n, (size, ext) in enumerate(specs):
        pixels, labels = runner_models.color_images(1, size=size, seed=10 + n)
        label = runner_models.LABELS[(labels[0] + n) % 3]
        pixels = np.roll(pixels, n, axis=-1)  # rotate channels so every colour appears
        Image.fromarray(pixels[0]).save(directory / f"{label}_{n}.{ext}", quality=95)
    return directory


def runner_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_RUNNER_")}
    env.update(extra)
    return env


def run(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *map(str, args)], capture_output=True, text=True,
                          env=env or runner_env(), timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 1 and exactly one line on stderr, without a traceback, containing every needle."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def direct_scores(model_path: Path, image_path: Path, tf) -> np.ndarray:
    """The model's scores computed without the runner: Pillow + tf.image.resize + LiteRT in-process."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    with Image.open(image_path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = inp["shape"][1:3]
    if pixels.shape[:2] != (height, width):
        pixels = tf.image.resize(pixels, [height, width], method="bilinear", antialias=False).numpy()
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        pixels = np.clip(np.round(pixels / scale + zero), info.min, info.max).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], pixels[None])
    interpreter.invoke()
    raw = interpreter.get_tensor(out["index"])[0]
    scale, zero = out["quantization"]
    return (raw.astype(np.float32) - zero) * scale if scale else raw


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header and ends there: decoding it would fail, opening does not."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return header + struct.pack(">I", 1000) + b"IDAT" + zlib.compress(bytes(100))[:10]


@contextlib.contextmanager
def served(model: Path, tmp_path: Path, *args, env=None):
    """A `serve` subprocess on a free port; yields (process, port). Its log goes to a file, not a pipe."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(RUNNER), "serve", str(model), "--port", "0", *args],
                                   stdout=subprocess.DEVNULL, stderr=log, env=env or runner_env())
    try:
        deadline = time.time() + 60
        while not (match := re.search(r"http://\S+:(\d+)", log_path.read_text())):
            assert process.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.05)
        yield process, int(match.group(1))
    finally:
        process.kill()
        process.wait()


def call(port: int, method: str, path: str, body: bytes | None = None, token: str | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def db_rows(db: Path, sql: str, *params) -> list:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql, params).fetchall()


# ---------------------------------------------------------------------------------------------------
# The script itself


def test_runner_is_standalone_and_parses_as_python_39():
    source = RUNNER.read_text()
    assert source.startswith('"""usage: python3 edgekit_runner.py ')
    tree = ast.parse(source, feature_version=(3, 9))
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                 for alias in node.names}
    top_level |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    everywhere = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                  for alias in node.names}
    everywhere |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "edgekit" not in everywhere
    assert top_level - set(sys.stdlib_module_names) <= {"__future__", "numpy"}
    # cv2 and picamera2 are imported only by `live`, which says what to install when they are missing;
    # simplejpeg is the optional fast JPEG path, Pillow when it is absent
    assert everywhere - set(sys.stdlib_module_names) <= {"__future__", "numpy", "PIL", "ai_edge_litert",
                                                          "tflite_runtime", "tensorflow", "cv2", "picamera2",
                                                          "simplejpeg"}


@pytest.mark.parametrize("shapes", [((50, 70), (32, 32)), ((20, 13), (32, 32)), ((480, 640), (224, 224)),
                                    ((33, 31), (32, 32)), ((7, 300), (96, 96)), ((1, 1), (5, 7))])
def test_resize_matches_tf_image_resize(runner, tf, shapes):
    (h, w), (height, width) = shapes
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3)).astype(np.uint8)
    ours = runner.resize_bilinear(image, height, width)
    theirs = tf.image.resize(image, [height, width], method="bilinear", antialias=False).numpy()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-3


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF"])
def test_decode_equals_tensorflow_decode_with_accurate_jpeg_dct(runner, tf, fmt):
    # TensorFlow's default JPEG DCT ("INTEGER_FAST") differs from Pillow by up to 4 levels on most pixels;
    # a training pipeline must decode with dct_method="INTEGER_ACCURATE" to see what the device sees.
    pixels, _ = runner_models.color_images(1, size=(48, 64), seed=7)
    buffer = io.BytesIO()
    Image.fromarray(pixels[0]).save(buffer, format=fmt, quality=90)
    ours, image_format = runner.decode_image(buffer.getvalue(), 10**6)
    if fmt == "JPEG":
        theirs = tf.io.decode_jpeg(buffer.getvalue(), channels=3, dct_method="INTEGER_ACCURATE")
    else:
        theirs = tf.io.decode_image(buffer.getvalue(), channels=3, expand_animations=False)
    assert image_format == fmt
    np.testing.assert_array_equal(ours, theirs.numpy())


def test_decode_takes_first_frame_of_animated_gif(runner):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    pixels, image_format = runner.decode_image(buffer.getvalue(), 10**6)
    assert image_format == "GIF" and pixels.shape == (8, 8, 3)
    assert pixels[..., 0].min() > 200 and pixels[..., 2].max() < 50


def test_pixel_limit_is_checked_before_decoding(runner):
    with pytest.raises(runner.ImageTooLarge, match="64.0 megapixels, over the 40 megapixel limit"):
        runner.decode_image(png_header(8000, 8000), 40 * 10**6)
    with pytest.raises(runner.ImageError, match="not a readable image"):
        runner.decode_image(png_header(20, 20), 40 * 10**6)  # small enough, so decoding finds it truncated


def test_importing_the_runner_keeps_pillows_decompression_bomb_guard(runner, models, tmp_path):
    """Training imports the runner: its decode must not switch Pillow's guard off in the host process."""
    default = Image.MAX_IMAGE_PIXELS
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    runner.decode_image(buffer.getvalue(), 40 * 10**6)
    assert Image.MAX_IMAGE_PIXELS == default and default is not None
    with pytest.raises(runner.ImageTooLarge, match="decompression-bomb"):  # 400 MP: Pillow refuses it first
        runner.decode_image(png_header(20000, 20000), 10**12)
    # The runner's own process relies on --max-megapixels alone: 400 MP under a 1000 MP limit is decoded
    # (and found truncated), not refused by Pillow.
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(20000, 20000))
    assert_user_error(run("classify", models["float32"], huge, "--no-log", "--max-megapixels", "1000"),
                      "huge.png", "not a readable image")


# ---------------------------------------------------------------------------------------------------
# classify


@pytest.mark.parametrize("kind", ["float32", "uint8", "int8"])
def test_classify_matches_direct_interpreter(models, images, tf, kind):
    result = run("classify", models[kind], images, "--json", "--no-log")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert [r["path"] for r in results] == sorted(str(p) for p in images.iterdir())
    for item in results:
        path = Path(item["path"])
        scores = direct_scores(models[kind], path, tf)
        best = item["top_k"][0]
        assert best["index"] == int(np.argmax(scores))
        assert best["label"] == path.name.split("_")[0]  # the colour the image was made with
        assert np.allclose([t["score"] for t in item["top_k"]], scores[[t["index"] for t in item["top_k"]]],
                           atol=1e-6)


@pytest.fixture(scope="module")
def class_folder(images, tmp_path_factory) -> Path:
    """The colour images as a class-folder dataset, plus a TIFF: what `edgekit eval --data` reads."""
    root = tmp_path_factory.mktemp("eval") / "data"
    for path in sorted(images.iterdir()):
        (root / path.name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        (root / path.name.split("_")[0] / path.name).write_bytes(path.read_bytes())
    pixels, _ = runner_models.color_images(1, size=(40, 30), seed=99)
    Image.fromarray(pixels[0]).save(root / "red" / "red_tiff.tif")
    return root


@pytest.mark.parametrize("kind", ["float32", "uint8", "int8", "pixel-range"])
def test_host_eval_and_runner_classify_give_identical_scores(models, class_folder, tmp_path, kind):
    """One implementation of model I/O: edgekit eval's .tflite path and the runner agree to the last bit,
    on every file of the folder (a .tif included) and with a manifest's pixel_range applied by both."""
    from edgekit import manifests
    from edgekit.data import DataSpec, scan_class_folders
    from edgekit.evaluate import evaluation_data, open_predictor, resolve_model

    path = models["float32" if kind == "pixel-range" else kind]
    if kind == "pixel-range":  # the model is fed [0, 1]: its scores change, and both sides must agree
        contract = manifests.ModelContract(file="model.tflite", input_size=(32, 32, 3),
                                           labels=tuple(runner_models.LABELS), pixel_range=(0.0, 1.0))
        path = runner_models.write_variant(tmp_path / "ranged", path.read_bytes())
        manifests.write(path.parent, manifests.VariantManifest(name="ranged", model=contract), [path.name])
    model_file, manifest = resolve_model(path)
    predictor = open_predictor(model_file)
    batches, _, labels, _ = evaluation_data(manifest, str(class_folder), predictor.input_size[0])
    host = np.concatenate([predictor.predict(x) for x, _ in batches])
    paths = scan_class_folders(class_folder, DataSpec(data=str(class_folder)), labels).paths

    result = run("classify", path, class_folder, "--json", "--no-log", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    device = {r["path"]: r["top_k"] for r in json.loads(result.stdout)}
    assert sorted(device) == sorted(paths) and any(p.endswith(".tif") for p in paths)
    for row, image in zip(host, paths):
        scores = np.zeros(3, np.float32)
        for entry in device[image]:
            scores[entry["index"]] = entry["score"]
        assert scores.tolist() == row.tolist(), image


def test_damaged_metadata_is_the_same_one_line_error_in_eval_and_classify(models, images, tmp_path):
    """Metadata may say how to normalise the input: neither side guesses around a damaged one."""
    from edgekit.errors import EdgekitError
    from edgekit.evaluate import TFLitePredictor
    from edgekit.tflite_metadata import _with_metadata_buffer

    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(_with_metadata_buffer(models["float32"].read_bytes(), b"\x10\x00\x00\x00M001\xff\xff"))
    line = assert_user_error(run("classify", damaged, images, "--no-log"), str(damaged),
                             "TFLITE_METADATA buffer is damaged")
    with pytest.raises(EdgekitError) as host:
        TFLitePredictor(damaged)
    assert line == f"edgekit_runner: error: {host.value}"


def test_bench_image_folder_is_decoded_by_the_runners_code(runner, models, class_folder, tmp_path):
    """`edgekit bench --images DIR` feeds what `classify DIR` would: same files, same pixels."""
    from edgekit.bench.inputs import folder_images
    from edgekit.tflite import parse_file

    feed = folder_images(parse_file(models["float32"]), class_folder, tmp_path / "x.npz", 100)
    paths = sorted(p for p in class_folder.rglob("*") if p.is_file())
    expected = [runner.resize_bilinear(runner.decode_image(p.read_bytes(), 10**8, (32, 32))[0], 32, 32)
                for p in paths]
    assert feed.pixels.dtype == np.float32 and np.array_equal(feed.pixels, np.stack(expected))


@pytest.mark.slow
def test_host_refuses_a_truncated_model_under_tf_lite_without_crashing(models, tmp_path):
    """The probe in a child process guards the host too: tf.lite would segfault on this file."""
    from edgekit.errors import EdgekitError
    from edgekit.evaluate import TFLitePredictor

    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(models["float32"].read_bytes()[:-200])
    with pytest.raises(EdgekitError, match="truncated.tflite: tf.lite cannot load this model"):
        TFLitePredictor(bad, runtime="tf.lite")


def test_classify_json_shape_and_log(models, images, tmp_path):
    db = tmp_path / "log.db"
    labels = tmp_path / "names.txt"
    labels.write_text("rot\ngruen\nblau\n")
    result = run("classify", models["uint8"], images / "red_0.png", images / "green_1.png", "--json",
                 "--top-k", "2", "--db", db, "--labels", labels, "--save-below", "0.99")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert len(results) == 2
    for item in results:
        assert set(item) == {"id", "path", "top_k", "latency_ms"}
        assert re.fullmatch(r"[0-9a-f]{32}", item["id"])
        assert set(item["latency_ms"]) == {"preprocess", "invoke", "postprocess"}
        assert len(item["top_k"]) == 2 and item["top_k"][0]["score"] >= item["top_k"][1]["score"]
        assert set(item["top_k"][0]) == {"label", "index", "score"}
    assert [r["top_k"][0]["label"] for r in results] == ["rot", "gruen"]  # --labels wins over labels.txt
    sha256 = hashlib.sha256(models["uint8"].read_bytes()).hexdigest()
    rows = db_rows(db, "SELECT id, model_sha256, source, top_k FROM predictions ORDER BY time")
    assert [(r[0], r[1], r[2]) for r in rows] == [(r["id"], sha256, str(Path(r["path"]).resolve()))
                                                  for r in results]
    assert json.loads(rows[0][3]) == results[0]["top_k"]
    for item in results:  # top scores are about 0.98, under --save-below 0.99: both inputs are kept
        [(image_path,)] = db_rows(db, "SELECT image_path FROM predictions WHERE id = ?", item["id"])
        assert image_path == f"samples/{db.stem}/{item['id']}.png"  # each database owns its samples folder
        assert (tmp_path / image_path).read_bytes() == Path(item["path"]).read_bytes()
    assert db_rows(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [(2,)]
    assert db_rows(db, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize("content", [b"hello", b"\x18\x00\x00\x00TFL3" + b"\x00" * 40, "first-1000-bytes"],
                         ids=["no-identifier", "header-only", "truncated"])
def test_malformed_model_is_one_line_error(models, images, tmp_path, content):
    if content == "first-1000-bytes":
        content = models["float32"].read_bytes()[:1000]
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    assert_user_error(run("classify", bad, images, "--no-log"), str(bad))


@pytest.mark.slow
def test_truncated_model_with_tf_lite_runtime_is_refused(models, images, tmp_path):
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(models["float32"].read_bytes()[:-200])
    assert_user_error(run("classify", bad, images, "--no-log", "--runtime", "tf.lite"), str(bad), "tf.lite")


def test_probe_crash_in_child_becomes_a_clear_error(runner, models, tmp_path, monkeypatch):
    crashing = tmp_path / "crash.py"
    crashing.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setattr(runner, "__file__", str(crashing))
    with pytest.raises(runner.RunnerError, match="crashed with SIGSEGV"):
        runner.probe_in_child(str(models["float32"]), "tf.lite", None)
    crashing.write_text("")  # a child that exits 0: the model is accepted
    runner.probe_in_child(str(models["float32"]), "tf.lite", None)


def test_labels_count_mismatch_names_file_and_counts(models, images, tmp_path):
    labels = tmp_path / "two.txt"
    labels.write_text("cat\ndog\n")
    assert_user_error(run("classify", models["float32"], images, "--no-log", "--labels", labels),
                      str(labels), "2 labels", "outputs 3")


def test_unreadable_image_is_an_error_when_named_and_skipped_in_a_directory(models, images, tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    assert_user_error(run("classify", models["float32"], garbage, "--no-log"), str(garbage), "not a readable")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a_truncated.png").write_bytes((images / "red_0.png").read_bytes()[:300])
    (folder / "b_good.png").write_bytes((images / "red_0.png").read_bytes())
    (folder / "notes.txt").write_text("ignored: not an image extension")
    result = run("classify", models["float32"], folder, "--no-log", "--json")
    assert result.returncode == 0, result.stderr
    assert [Path(r["path"]).name for r in json.loads(result.stdout)] == ["b_good.png"]
    assert "a_truncated.png: skipped" in result.stderr and "Traceback" not in result.stderr


def test_image_over_the_pixel_limit_is_refused(models, images, tmp_path):
    assert_user_error(run("classify", models["float32"], images / "red_0.png", "--no-log",
                          "--max-megapixels", "0.001"), "red_0.png", "megapixel limit")


# ---------------------------------------------------------------------------------------------------
# The prediction log: samples, locks, feedback


def test_sample_budget_drops_oldest_first_and_counts_drops(runner, tmp_path):
    log = runner.PredictionLog(str(tmp_path / "log.db"), sample_budget=1000)
    result = {"top_k": [{"label": "red", "index": 0, "score": 0.1}], "latency_ms": {}}
    ids = [log.log_prediction("sha", f"img{i}", result, bytes([i]) * 400, "png") for i in range(3)]
    kept = dict(db_rows(tmp_path / "log.db", "SELECT id, image_path FROM predictions"))
    assert kept[ids[0]] is None and kept[ids[1]] and kept[ids[2]]  # the third evicted the first
    assert not (tmp_path / "samples" / "log" / f"{ids[0]}.png").exists()
    assert (tmp_path / kept[ids[2]]).read_bytes() == bytes([2]) * 400
    assert log.dropped_samples() == 1
    too_big = log.log_prediction("sha", "big", result, b"x" * 1001, "png")  # larger than the whole budget
    assert log.dropped_samples() == 2
    kept = dict(db_rows(tmp_path / "log.db", "SELECT id, image_path FROM predictions"))
    assert kept[too_big] is None and kept[ids[1]] and kept[ids[2]]
    on_disk = sorted(p.name for p in (tmp_path / "samples" / "log").iterdir())
    assert on_disk == sorted([f"{ids[1]}.png", f"{ids[2]}.png"])
    log.close()


def test_locked_database_gives_clear_message_and_keeps_rows(models, images, tmp_path):
    db = tmp_path / "log.db"
    first = run("classify", models["float32"], images / "red_0.png", "--db", db, "--json")
    assert first.returncode == 0, first.stderr
    before = db_rows(db, "SELECT * FROM predictions")
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        locked = run("classify", models["float32"], images / "red_0.png", "--db", db, "--busy-timeout", "0.3")
        assert_user_error(locked, str(db), "locked by another process")
        assert time.monotonic() - started < 30
        holder.execute("ROLLBACK")
    assert db_rows(db, "SELECT * FROM predictions") == before and len(before) == 1


def test_feedback_cli_checks_id_and_label(runner, models, tmp_path):
    db = tmp_path / "log.db"
    log = runner.PredictionLog(str(db))
    model = runner.Model(str(models["float32"]))
    log.register_model(model, runner.resolve_labels(model, None))
    prediction_id = log.log_prediction(model.sha256, "green.png", {"top_k": [], "latency_ms": {}})
    log.close()
    assert_user_error(run("feedback", "0" * 32, "red", "--db", db), "'00000000", "not in")
    assert_user_error(run("feedback", prediction_id, "purple", "--db", db), "'purple'", "red, green, blue")
    assert_user_error(run("feedback", prediction_id, "red", "--db", tmp_path / "missing.db"), "missing.db")
    recorded = run("feedback", prediction_id, "blue", "--db", db)
    assert recorded.returncode == 0, recorded.stderr
    rows = db_rows(db, "SELECT prediction_id, label, source FROM feedback")
    assert rows == [(prediction_id, "blue", "cli")]


# ---------------------------------------------------------------------------------------------------
# serve


def test_serve_answers_good_and_bad_requests_and_keeps_serving(models, images, tmp_path):
    db = tmp_path / "serve.db"
    with served(models["uint8"], tmp_path, "--db", db, "--max-body-bytes", "20000") as (_, port):
        status, body = call(port, "POST", "/predict", (images / "blue_2.bmp").read_bytes())
        assert status == 200, body
        assert body["top_k"][0]["label"] == "blue" and re.fullmatch(r"[0-9a-f]{32}", body["id"])
        assert set(body["latency_ms"]) == {"preprocess", "invoke", "postprocess", "request"}
        assert call(port, "POST", "/predict", b"this is not an image")[0] == 400
        # Over the limit: the body is announced but never sent, so only an early answer can pass.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Length", str(10**9))
        connection.endheaders(b"x" * 100)
        assert connection.getresponse().status == 413
        connection.close()
        assert call(port, "GET", "/health") == (200, {"status": "ok"})
        def feedback(prediction_id, label):
            return call(port, "POST", "/feedback", json.dumps({"id": prediction_id, "label": label}).encode())

        assert feedback("f" * 32, "red")[0] == 404
        assert feedback(body["id"], "mauve")[0] == 400
        assert call(port, "POST", "/feedback", b"{not json")[0] == 400
        status, answer = feedback(body["id"], "red")
        assert status == 200 and answer["ok"]
        assert call(port, "GET", "/nowhere")[0] == 404
        status, stats = call(port, "GET", "/stats")
        assert status == 200
        assert (stats["predictions"], stats["feedback"], stats["errors"]) == (1, 1, 6)
        assert stats["latency_ms"]["invoke"]["p50"] > 0
        assert stats["latency_ms"]["request"]["p99"] >= stats["latency_ms"]["invoke"]["p99"]
    assert db_rows(db, "SELECT label FROM feedback WHERE prediction_id = ?", body["id"]) == [("red",)]


def test_serve_beyond_localhost_needs_a_token(models):
    refused = run("serve", models["float32"], "--host", "0.0.0.0", "--port", "0")
    assert_user_error(refused, "--host 0.0.0.0", "EDGEKIT_RUNNER_TOKEN", "--token-file")
    weak = run("serve", models["float32"], "--host", "0.0.0.0", env=runner_env(EDGEKIT_RUNNER_TOKEN="short"))
    assert_user_error(weak, "shorter than 16")


def test_served_prediction_and_feedback_survive_sigkill(models, images, tmp_path):
    db = tmp_path / "durable.db"
    env = runner_env(EDGEKIT_RUNNER_TOKEN=TOKEN)
    with served(models["float32"], tmp_path, "--db", db, env=env) as (process, port):  # a token binds on loopback too
        assert call(port, "GET", "/health")[0] == 200  # liveness needs no token
        assert call(port, "POST", "/predict", (images / "red_0.png").read_bytes())[0] == 401
        assert call(port, "GET", "/stats", token="wrong-token-0123456789")[0] == 401
        status, body = call(port, "POST", "/predict", (images / "red_0.png").read_bytes(), token=TOKEN)
        assert status == 200
        feedback = json.dumps({"id": body["id"], "label": "green"}).encode()
        assert call(port, "POST", "/feedback", feedback, token=TOKEN)[0] == 200
        process.kill()  # SIGKILL right after the answer: no chance to flush or close anything
        process.wait()
    assert db_rows(db, "SELECT id, source FROM predictions") == [(body["id"], "http")]
    assert db_rows(db, "SELECT prediction_id, label, source FROM feedback") == [(body["id"], "green", "http")]


# ---------------------------------------------------------------------------------------------------
# bench and doctor


def test_bench_cycles_real_inputs_and_reports_delegate_error(models, images, tmp_path, tf):
    pixels = [np.asarray(Image.open(images / name).convert("RGB"), dtype=np.float32)
              for name in ("red_0.png", "green_1.png", "blue_2.bmp")]
    x = np.stack([tf.image.resize(p, [32, 32], method="bilinear", antialias=False).numpy() for p in pixels])
    np.savez(tmp_path / "inputs.npz", x=x)
    result = run("bench", models["int8"], "--images", tmp_path / "inputs.npz", "--runs", "20", "--warmup",
                 "2", "--min-seconds", "0", "--delegate", "edgetpu", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["latency_ms"]["n"] >= 20 and report["latency_ms"]["min"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["first_ms"] > 0 and report["load_ms"] > 0 and report["peak_rss_mb"] > 10
    assert report["model_sha256"] == hashlib.sha256(models["int8"].read_bytes()).hexdigest()
    assert report["runtime"]["name"] == "litert" and report["input"]["count"] == 3
    assert [o["argmax"] for o in report["outputs"]] == [0, 1, 2]  # three different inputs, not one cached
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(models["int8"]))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    for sample, image in zip(report["outputs"], x, strict=True):
        quantized = np.clip(np.round(image / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], quantized[None])
        interpreter.invoke()
        assert sample["output"] == interpreter.get_tensor(out["index"])[0].tolist()
    if report["delegate_error"] is None:
        pytest.skip("an Edge TPU library is installed here; the unavailable-delegate path cannot be shown")
    assert report["delegate_error"].startswith("edgetpu: not available (")
    required = run("bench", models["int8"], "--images", images, "--delegate", "edgetpu", "--require-delegate")
    assert_user_error(required, "edgetpu: not available")


def test_bench_versus_times_both_models_in_interleaved_rounds(models, images):
    result = run("bench", models["int8"], "--images", images, "--runs", "10", "--min-seconds", "0",
                 "--versus", models["float32"], "--versus-images", images, "--rounds", "4", "--json")
    assert result.returncode == 0, result.stderr
    versus = json.loads(result.stdout)["versus"]
    assert versus["model_sha256"] == hashlib.sha256(models["float32"].read_bytes()).hexdigest()
    assert len(versus["rounds_ms"]) == 4 and versus["per_round"] == 5
    assert all(a > 0 and b > 0 for a, b in versus["rounds_ms"])
    lacking = run("bench", models["int8"], "--images", images, "--versus", models["float32"])
    assert_user_error(lacking, "--versus needs exactly one of --versus-images or --versus-inputs")


def test_bench_on_image_directory_prints_a_summary(models, images):
    result = run("bench", models["float32"], "--images", images, "--runs", "5", "--min-seconds", "0")
    assert result.returncode == 0, result.stderr
    assert "invoke over" in result.stdout and "6 inputs" in result.stdout


def test_doctor_reports_interpreters_and_install_lines(tmp_path, runner):
    # A stand-in TensorFlow that fails to import keeps this fast and shows the advice for a missing runtime.
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    result = run("doctor", "--json", env=runner_env(PYTHONPATH=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    import ai_edge_litert

    runtimes = {r["name"]: r for r in report["runtimes"]}
    assert list(runtimes) == ["litert", "tflite_runtime", "tf.lite"]
    assert runtimes["litert"]["available"] and runtimes["litert"]["version"] == ai_edge_litert.__version__
    pip = f"{sys.executable} -m pip install"  # this interpreter's own pip: a venv's, or a PEP 668 hint
    assert runtimes["tf.lite"] == {"name": "tf.lite", "available": False, "version": None,
                                   "error": "hidden by the test", "install": f"{pip} tensorflow"}
    # tflite-runtime needs numpy<2, which would downgrade numpy under TensorFlow here: a venv of its own
    assert runtimes["tflite_runtime"]["install"].splitlines()[-1] == (
        f"{runner.TFLRT_VENV}/bin/python -m pip install tflite-runtime 'numpy<2' pillow")
    assert report["selected_runtime"] == "litert" and report["numpy"] == np.__version__
    assert report["cpu_count"] == os.cpu_count() and report["memory_total_mb"] > 0
    assert "libedgetpu1-std" in report["edgetpu"]["install"]
    assert report["missing"] == []
    fast = report["features"]["simplejpeg"]  # optional: said, with how to install it, never missing
    assert fast["used_for"].startswith("JPEG decoding") and (fast["available"] or fast["install"].endswith(
        "pip install simplejpeg"))
