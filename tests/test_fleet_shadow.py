"""The runner's shadow mode: a candidate beside the serving model, logged but never answered."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

RUNNER = Path(__file__).resolve().parents[1] / "edgekit" / "resources" / "devices" / "edgekit_runner.py"


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def report(db: Path, *extra) -> dict:
    result = run("shadow-report", "--db", db, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_shadow_logs_agreement_but_serves_the_serving_model(fleet_models, fleet_images, tmp_path):
    db = tmp_path / "log.db"
    plain = run("classify", fleet_models["base"], fleet_images, "--json", "--no-log")
    shadowed = run("classify", fleet_models["base"], fleet_images, "--json", "--db", db,
                   "--shadow", fleet_models["other"], "--shadow-tag", "r1")
    assert shadowed.returncode == 0, shadowed.stderr
    answers = lambda result: [r["top_k"][0]["label"] for r in json.loads(result.stdout)]  # noqa: E731
    assert answers(shadowed) == answers(plain)  # the candidate never answers
    other = report(db, "--tag", "r1")
    assert other["rows"] == 12 and other["errors"] == 0 and other["agreement"] == 0.0
    assert other["candidate_ms"]["p90"] > 0 and len(other["candidates"]) == 1
    run("classify", fleet_models["base"], fleet_images, "--db", db, "--shadow", fleet_models["same"],
        "--shadow-tag", "r2")
    same = report(db, "--tag", "r2")
    assert same["rows"] == 12 and same["agreement"] == 1.0 and abs(same["score_shift"]) < 0.01
    quantized = run("classify", fleet_models["base"], fleet_images, "--db", db, "--shadow", fleet_models["int8"],
                    "--shadow-tag", "r3")
    assert quantized.returncode == 0, quantized.stderr
    assert report(db, "--tag", "r3")["agreement"] == 1.0  # int8 input: converted from the same pixels
    assert report(db)["rows"] == 36 and report(db, "--since", "2999-01-01")["rows"] == 0


def test_version_1_log_gains_the_shadow_table(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', 1)")
    assert report(db)["rows"] == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (2,)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")
    newer = run("shadow-report", "--db", db)
    assert newer.returncode == 1 and "schema_version 3" in newer.stderr and "Traceback" not in newer.stderr


def test_shadow_with_other_input_size_or_no_log_is_one_line(fleet_models, fleet_images, tmp_path):
    result = run("classify", fleet_models["base"], fleet_images, "--no-log", "--shadow", fleet_models["other"])
    assert result.returncode == 1 and "drop --no-log" in result.stderr.strip().splitlines()[-1]


def test_serve_answers_with_the_serving_model_and_shadows_the_candidate(fleet_models, fleet_images, tmp_path):
    import http.client
    import re
    import signal
    import time

    db, log_path = tmp_path / "serve.db", tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(RUNNER), "serve", str(fleet_models["base"]), "--port", "0",
                                    "--db", str(db), "--shadow", str(fleet_models["other"]), "--shadow-tag", "s1"],
                                   stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.time() + 60
        while not (match := re.search(r"http://\S+:(\d+)", log_path.read_text())):
            assert process.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.05)
        image = sorted(fleet_images.glob("red_*.png"))[0]
        connection = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=20)
        connection.request("POST", "/predict", body=image.read_bytes())
        answer = json.loads(connection.getresponse().read())
        connection.close()
        assert answer["top_k"][0]["label"] == "red"  # the candidate (which says green) is never served
        process.send_signal(signal.SIGTERM)  # a clean stop compares what is still queued
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()
    summary = report(db, "--tag", "s1")
    assert summary["rows"] == 1 and summary["agreement"] == 0.0
