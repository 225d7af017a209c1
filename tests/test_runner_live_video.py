"""The runner's live input through real OpenCV: a video file made with cv2.VideoWriter, an MJPEG stream
served on 127.0.0.1 by a tiny http.server in this file, and the message when OpenCV is missing.

The only runner tests that need OpenCV, so they alone are skipped without it (test_runner_field.py runs).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import runner_models  # noqa: E402
from test_runner import assert_user_error, call, db_rows, run, runner_env, served  # noqa: E402
from test_runner_field import frame, jpeg, wait_for  # noqa: E402

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is in the dev extra")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    content = runner_models.colour_tflite()
    return runner_models.write_variant(tmp_path_factory.mktemp("model"), content)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """30 frames at 30 fps: 10 red, 10 green, 10 blue (MJPG in AVI, which every OpenCV build writes)."""
    path = tmp_path_factory.mktemp("video") / "colours.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    assert writer.isOpened()
    for colour in ("red", "green", "blue"):
        for _ in range(10):
            writer.write(np.ascontiguousarray(frame(colour)[:, :, ::-1]))  # OpenCV writes BGR
    writer.release()
    return path


def live(model: Path, source, *args, env=None) -> subprocess.CompletedProcess:
    return run("live", model, source, "--json", *args, env=env)


def predictions(result: subprocess.CompletedProcess) -> tuple[list[dict], dict]:
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return lines[:-1], lines[-1]["summary"]


def test_live_video_file_with_every_nth_frame_and_log_on_change(model, video, tmp_path):
    db = tmp_path / "live.db"
    changes, summary = predictions(live(model, video, "--db", db, "--log-policy", "change"))
    assert [p["top_k"][0]["label"] for p in changes] == ["red", "green", "blue"]
    assert summary["frames"] == 30 and summary["logged"] == 3
    assert sorted(row[0] for row in db_rows(db, "SELECT id FROM predictions")) == sorted(p["id"] for p in changes)
    assert {row[0] for row in db_rows(db, "SELECT source FROM predictions")} == {str(video)}
    every, summary = predictions(live(model, video, "--no-log", "--log-policy", "all", "--every", "3"))
    assert summary["frames"] == 10 and len(every) == 10 and all(p["id"] is None for p in every)
    limited, summary = predictions(live(model, video, "--no-log", "--log-policy", "all", "--fps", "10",
                                        "--max-frames", "4"))
    assert summary["frames"] == 4
    assert [round(p["time_s"], 1) for p in limited] == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=0.05)


def test_live_logs_below_a_confidence_and_keeps_samples_within_the_budget(model, video, tmp_path):
    db = tmp_path / "below.db"
    logged, summary = predictions(live(model, video, "--db", db, "--log-policy", "below", "--log-below", "1.01",
                                       "--save-all", "--max-frames", "5", "--sync-interval", "0"))
    assert summary["logged"] == 5 == len(logged)
    kept = [row[0] for row in db_rows(db, "SELECT image_path FROM predictions")]
    assert all(path and path.endswith(".jpg") for path in kept)
    with Image.open(tmp_path / kept[0]) as sample:
        assert sample.size == (64, 48) and sample.getpixel((30, 20))[0] > 180  # an RGB frame, not BGR
    none, summary = predictions(live(model, video, "--no-log", "--log-policy", "below", "--log-below", "0.0"))
    assert summary["frames"] == 30 and summary["logged"] == 0 and none == []


class _Mjpeg(http.server.BaseHTTPRequestHandler):
    frames: list[bytes] = []

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        with contextlib.suppress(OSError):
            for data in self.frames:
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data))
                self.wfile.write(data + b"\r\n")
                self.wfile.flush()
                time.sleep(0.02)

    def log_message(self, *args):
        pass


def test_live_reads_an_mjpeg_stream_over_http(model, tmp_path):
    _Mjpeg.frames = [jpeg(frame(colour)) for colour in ("green",) * 20 + ("blue",) * 40]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Mjpeg)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
        seen, summary = predictions(live(model, url, "--no-log", "--log-policy", "all", "--max-frames", "30"))
    finally:
        server.shutdown()
    labels = [p["top_k"][0]["label"] for p in seen]
    assert summary["frames"] == 30 and set(labels) <= {"green", "blue"} and labels[0] == "green"
    assert all(p["source"] == url for p in seen)


def test_live_without_opencv_says_what_to_install(model, video, tmp_path):
    (tmp_path / "cv2.py").write_text("raise ModuleNotFoundError(\"No module named 'cv2'\", name='cv2')\n")
    result = live(model, video, env=runner_env(PYTHONPATH=str(tmp_path)))
    assert_user_error(result, "OpenCV is not installed", "opencv")
    missing = live(model, tmp_path / "nope.mp4")
    assert_user_error(missing, "nope.mp4", "OpenCV cannot open it")


def test_live_with_a_broken_opencv_does_not_say_install_opencv_and_serve_reports_degraded(model, video,
                                                                                           tmp_path):
    # apt's OpenCV under a venv whose pip numpy 2 hides apt's numpy 1.x fails like this
    (tmp_path / "cv2.py").write_text(
        "import sys\nsys.stderr.write('A module that was compiled using NumPy 1.x cannot be run in NumPy 2\\n"
        "Traceback (most recent call last):\\n')\nraise ImportError('numpy.core.multiarray failed to import')\n")
    env = runner_env(PYTHONPATH=str(tmp_path))
    line = assert_user_error(live(model, video, env=env), "OpenCV is installed", "does not import",
                             "numpy.core.multiarray failed to import")
    assert "pip install opencv" not in line
    with served(model, tmp_path, "--live", video, "--no-log", env=env) as (_, port):
        wait_for(lambda: call(port, "GET", "/health")[1].get("live") != "running")
        status, health = call(port, "GET", "/health")
        assert status == 200 and health["status"] == "degraded" and health["live"].startswith("failed")
