"""The runner in the field without OpenCV: the live reader thread, a watched folder, clean stops,
GET /latest, and bounded resources (decode slots, stalled uploads, retention, orphans, fsync).

Live input through OpenCV (video file, MJPEG stream) is in test_runner_live_video.py, which alone is
skipped where OpenCV is not installed.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import runner_models  # noqa: E402
from test_runner import RUNNER, assert_user_error, call, db_rows, run, runner_env, served  # noqa: E402

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    content = runner_models.colour_tflite()
    return runner_models.write_variant(tmp_path_factory.mktemp("model"), content)


def frame(colour: str, size=(64, 48)) -> np.ndarray:
    rng = np.random.default_rng(len(colour))
    pixels = np.zeros((size[1], size[0], 3), np.uint8) + np.asarray(COLOURS[colour], np.uint8)
    return np.clip(pixels + rng.integers(0, 20, pixels.shape), 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# live


class _ListSource:
    """A live source of ready frames that records when each one is asked for."""

    def __init__(self, runner, items, fail_after=None):
        self.runner, self.items, self.fail_after = runner, items, fail_after
        self.asked = [threading.Event() for _ in items]

    def frames(self, stop, gate):
        for index, item in enumerate(self.items):
            if stop.is_set():
                return
            self.asked[index].set()
            if index == self.fail_after:
                raise self.runner.RunnerError("camera unplugged")
            yield item


def _pixels_frame(runner, index):
    return runner.Frame(f"frame{index}", index / 30, np.full((48, 64, 3), index, np.uint8), None)


def test_live_prepares_the_next_frame_while_this_one_is_classified(runner):
    """The reader thread decodes frame n+1 during frame n's invoke, keeps order, passes bad files on as
    errors, and a frame limit (closing the generator) stops and joins it."""
    model = SimpleNamespace(height=24, width=32, to_input=lambda pixels: pixels)
    items = [_pixels_frame(runner, 0), runner.Frame("broken.jpg", 0.0, None, b"not an image"),
             *(_pixels_frame(runner, i) for i in range(2, 6))]
    source = _ListSource(runner, items)
    frames = runner.prepared_frames(source, threading.Event(), runner.FrameGate(1, None), model, 10**6)
    first, prepared = next(frames)
    assert first.source == "frame0" and prepared[0].shape == (24, 32, 3) and prepared[2] == "JPEG"
    # still holding frame 0: the reader has already gone on to the next frames
    assert source.asked[1].wait(5) and source.asked[2].wait(5)
    broken, error = next(frames)
    assert broken.source == "broken.jpg" and isinstance(error, runner.ImageError)
    assert [frame.source for frame, _ in [next(frames), next(frames)]] == ["frame2", "frame3"]
    frames.close()
    assert not [t for t in threading.enumerate() if t.name == "live-reader"]
    assert not source.asked[5].is_set()  # one frame ahead, no more


def test_live_source_failure_reaches_the_caller(runner):
    model = SimpleNamespace(height=24, width=32, to_input=lambda pixels: pixels)
    source = _ListSource(runner, [_pixels_frame(runner, i) for i in range(3)], fail_after=1)
    frames = runner.prepared_frames(source, threading.Event(), runner.FrameGate(1, None), model, 10**6)
    assert next(frames)[0].source == "frame0"
    with pytest.raises(runner.RunnerError, match="camera unplugged"):
        next(frames)
    assert not [t for t in threading.enumerate() if t.name == "live-reader"]


def wait_for(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_live_watched_folder_classifies_new_files_and_stops_cleanly_on_sigterm(model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "old.jpg").write_bytes(jpeg(frame("red")))  # there before the start: not new
    db, out = tmp_path / "folder.db", tmp_path / "out.jsonl"
    with open(out, "w") as handle:
        process = subprocess.Popen([sys.executable, str(RUNNER), "live", str(model), str(inbox), "--json", "--db",
                                    str(db), "--log-policy", "all"], stdout=handle, stderr=subprocess.PIPE,
                                   text=True, env=runner_env())
    try:
        # files there when it lists the folder are old: wait for the log, opened just before the listing
        wait_for(db.exists)
        time.sleep(1.0)
        for n, colour in enumerate(("blue", "green")):
            part = inbox / f"new{n}.jpg.part"
            part.write_bytes(jpeg(frame(colour)))  # written under a temporary name, then renamed
            os.replace(part, inbox / f"new{n}.jpg")
        wait_for(lambda: len(out.read_text().splitlines()) >= 2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "live: 2 frames" in stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(Path(p["source"]).name, p["top_k"][0]["label"]) for p in lines[:2]] == [("new0.jpg", "blue"),
                                                                                    ("new1.jpg", "green")]
    assert lines[-1]["summary"]["frames"] == 2
    assert len(db_rows(db, "SELECT id FROM predictions")) == 2


def test_serve_live_shows_the_latest_prediction(model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with served(model, tmp_path, "--live", inbox, "--no-log") as (_, port):
        assert call(port, "GET", "/latest")[1]["prediction"] is None
        (inbox / "a.png").write_bytes(jpeg(frame("green")))
        wait_for(lambda: call(port, "GET", "/latest")[1]["prediction"] is not None)
        latest = call(port, "GET", "/latest")[1]
        assert latest["source"] == "live" and latest["prediction"]["top_k"][0]["label"] == "green"
        assert call(port, "GET", "/health")[1] == {"status": "ok", "live": "running"}


# ---------------------------------------------------------------------------------------------------
# serve: bounded resources


def test_serve_caps_decodes_times_out_stalled_uploads_and_truncates_echoes(model, tmp_path):
    with served(model, tmp_path, "--no-log", "--max-decodes", "1", "--read-timeout", "1") as (_, port):
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")  # then nothing
        time.sleep(0.3)
        connection = __import__("http.client").client.HTTPConnection("127.0.0.1", port, timeout=20)
        connection.request("POST", "/predict", body=jpeg(frame("red")))
        busy = connection.getresponse()
        assert busy.status == 503 and busy.getheader("Retry-After") == "1"
        assert "--max-decodes" in json.loads(busy.read())["error"]
        stalled.settimeout(10)
        answer = b""  # the headers and the body can come in separate reads
        while b"--read-timeout" not in answer and (chunk := stalled.recv(4096)):
            answer += chunk
        answer = answer.decode()
        assert answer.startswith("HTTP/1.0 408") and "--read-timeout" in answer
        stalled.close()
        status, body = call(port, "POST", "/predict", jpeg(frame("red")))  # the slot is free again
        assert status == 200 and body["top_k"][0]["label"] == "red"
        status, body = call(port, "GET", "/" + "x" * 60000)
        assert status in (404, 414) and len(json.dumps(body)) < 400
    with served(model, tmp_path, "--db", tmp_path / "echo.db") as (_, port):
        _, prediction = call(port, "POST", "/predict", jpeg(frame("red")))
        status, body = call(port, "POST", "/feedback", json.dumps({"id": prediction["id"],
                                                                    "label": "L" * 60000}).encode())
        assert status == 400 and len(body["error"]) < 400 and "60000 characters" in body["error"]


def test_serve_port_out_of_range_is_one_line(model):
    assert_user_error(run("serve", model, "--port", "70000"), "--port", "70000", "1-65535")


# ---------------------------------------------------------------------------------------------------
# The prediction log: retention, orphans, fsync


RESULT = {"top_k": [{"label": "red", "index": 0, "score": 0.1}], "latency_ms": {}}


def test_retention_trims_oldest_rows_keeps_feedback_and_counts(runner, tmp_path):
    db = tmp_path / "log.db"
    log = runner.PredictionLog(str(db), keep_rows=5)
    ids = [log.log_prediction("sha", f"img{i}", RESULT, b"x" * 10, "png") for i in range(12)]
    with log.transaction() as connection:
        connection.execute("INSERT INTO feedback (prediction_id, label, time, source) VALUES (?, 'red', 't', 'cli')",
                           (ids[0],))
    assert log.start_writing()["trimmed_rows"] == 7
    left = [row[0] for row in db_rows(db, "SELECT id FROM predictions ORDER BY rowid")]
    assert left == [ids[0]] + ids[-4:]  # the oldest go, except the one with feedback
    assert log.counters() == {"dropped_samples": 0, "trimmed_rows": 7}
    assert sorted(p.name for p in (tmp_path / "samples" / "log").iterdir()) == sorted(f"{i}.png" for i in left)
    old = runner.PredictionLog(str(db), keep_days=1)
    with old.transaction() as connection:
        connection.execute("UPDATE predictions SET time = '2020-01-01T00:00:00.000+00:00' WHERE id = ?", (ids[-1],))
    assert old.trim() == 1 and old.counters()["trimmed_rows"] == 8
    log.close()
    old.close()


def test_start_removes_orphan_samples_and_forgets_missing_ones(runner, tmp_path):
    db = tmp_path / "log.db"
    log = runner.PredictionLog(str(db))
    kept = log.log_prediction("sha", "a", RESULT, b"a" * 10, "jpg")
    lost = log.log_prediction("sha", "b", RESULT, b"b" * 10, "jpg")
    log.close()
    samples = tmp_path / "samples" / "log"
    (samples / f"{lost}.jpg").unlink()  # as if a power cut lost the file but not the row
    (samples / "dead.jpg.tmp").write_bytes(b"half")  # a kill between write and rename
    (samples / "unreferenced.jpg").write_bytes(b"no row")  # a kill between rename and commit
    log = runner.PredictionLog(str(db))
    assert log.start_writing() == {"orphan_samples_removed": 2, "missing_samples_forgotten": 1, "trimmed_rows": 0}
    assert sorted(p.name for p in samples.iterdir()) == [f"{kept}.jpg"]
    assert dict(db_rows(db, "SELECT id, image_path FROM predictions"))[lost] is None
    assert log.counters()["dropped_samples"] == 1
    log.close()


def test_writers_saving_the_same_sample_at_once_all_succeed(runner, tmp_path):
    """Samples are named by content, so `serve`'s threads (or two runners on one log) can save the same
    image at the same moment; each writes through its own temporary name, and the one file left is whole."""
    from concurrent.futures import ThreadPoolExecutor

    target, data = str(tmp_path / "samples" / "same.jpg"), os.urandom(1 << 20)

    def save_many(_):
        for _ in range(25):
            runner.write_file_durably(target, data, sync=False)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(save_many, range(4)))
    assert [p.name for p in (tmp_path / "samples").iterdir()] == ["same.jpg"]
    assert (tmp_path / "samples" / "same.jpg").read_bytes() == data


def test_grouped_sync_fsyncs_wal_samples_and_folder_and_per_row_mode_fsyncs_the_folder(runner, tmp_path,
                                                                                      monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    grouped = runner.PredictionLog(str(tmp_path / "g" / "log.db"), sync_interval=0.05)
    grouped.start_writing()
    synced.clear()
    sample_id = grouped.log_prediction("sha", "a", RESULT, b"a" * 10, "jpg")
    assert not any(sample_id in path for path in synced)  # not fsynced before the answer...
    wait_for(lambda: str(tmp_path / "g" / "samples" / "log") in synced, timeout=10)  # ...but within the interval
    assert str(tmp_path / "g" / "log.db-wal") in synced
    assert any(path.endswith(f"{sample_id}.jpg") for path in synced)
    grouped.close()
    synced.clear()
    per_row = runner.PredictionLog(str(tmp_path / "p" / "log.db"), sync_interval=0)
    per_row.log_prediction("sha", "b", RESULT, b"b" * 10, "jpg")
    assert synced[-1] == str(tmp_path / "p" / "samples" / "log")  # the rename is made durable too
    per_row.close()
