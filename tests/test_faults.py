"""Faults from outside the command: SIGTERM/SIGHUP to `edgekit bench` stop its runner child too, and a
read-only or full $EDGEKIT_HOME makes `deploy`, `bench` and `feedback import` fail in one line, leaving
no `.part` file behind.

Read-only and full disks are real tmpfs mounts (the tests run as root, so permission bits would not
stop a write); where mounting is not allowed those cases are skipped.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgekit.cli import app

sys.path.insert(0, str(Path(__file__).parent))
import runner_models  # noqa: E402
from test_misuse import _mount_tmpfs  # noqa: E402

cli = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A bare .tflite (no manifest): bench times it on generated inputs, deploy copies it as it is."""
    path = tmp_path_factory.mktemp("fault-model") / "colours.tflite"
    path.write_bytes(runner_models.colour_tflite())
    return path


@pytest.fixture(params=["read-only", "full"])
def bad_home(request, tmp_path, monkeypatch):
    """$EDGEKIT_HOME on a read-only tmpfs, or on one with 8 KB left (the runner alone is 100+ KB)."""
    home = tmp_path / f"{request.param}-home"
    _mount_tmpfs(home, "size=1m")
    try:
        if request.param == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
        else:
            free = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize
            (home / "filler").write_bytes(b"\0" * (free - 8192))
        monkeypatch.setenv("EDGEKIT_HOME", str(home))
        yield request.param, home
    finally:
        subprocess.run(["umount", "--lazy", str(home)], check=False)


def _parts(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.name.endswith(".part") or ".tmp" in p.name]


def _failure(args: list[str]) -> str:
    result = cli.invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    return result.output


def _fix_for(kind: str) -> str:
    return "Read-only file system" if kind == "read-only" else "No space left on device"


def test_deploy_to_a_read_only_or_full_home_is_one_line_without_part_files(bad_home, model):
    kind, home = bad_home
    lines = _failure(["deploy", str(model), "--device", "desktop"]).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(home) in lines[0] and _fix_for(kind) in lines[0], lines[0]
    assert ("free some space" if kind == "full" else "EDGEKIT_HOME") in lines[0]
    assert not _parts(home)


def test_bench_with_a_read_only_or_full_home_is_one_line_without_part_files(bad_home, model, tmp_path):
    kind, home = bad_home
    out = tmp_path / "bench-out"
    output = _failure(["bench", str(model), "--device", "desktop", "--runs", "1", "--warmup", "0",
                       "--min-seconds", "0", "--out", str(out)])
    if kind == "read-only":  # refused before the work: nothing is written anywhere
        lines = output.strip().splitlines()
        assert len(lines) == 1 and str(home) in lines[0] and "EDGEKIT_HOME" in lines[0], output
        assert not out.exists()
    else:  # the copy to the device fails: an error row, the results say so (as for an unreachable device)
        warning = next(line for line in output.splitlines() if line.startswith("warning: "))
        assert f"cannot write in {home}/targets/desktop" in warning and "free some space" in warning, output
        assert (out / "results.json").is_file()
    assert not _parts(home)


def test_feedback_import_into_a_full_home_is_one_line(tmp_path, monkeypatch):
    db = tmp_path / "device" / "edgekit_runner.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.executescript("CREATE TABLE predictions (id TEXT, model_sha256 TEXT, top_k TEXT, image_path TEXT, "
                           "blob BLOB); CREATE TABLE feedback (id INTEGER, prediction_id TEXT, label TEXT, time TEXT);")
        conn.executemany("INSERT INTO predictions VALUES (?, 'x', '[]', NULL, ?)",
                         [(str(i), os.urandom(4096)) for i in range(64)])  # 256 KB: more than the home holds
    home = tmp_path / "full-home"
    _mount_tmpfs(home, "size=128k")
    try:
        free = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize
        (home / "filler").write_bytes(b"\0" * max(free - 16384, 0))
        monkeypatch.setenv("EDGEKIT_HOME", str(home))
        lines = _failure(["feedback", "import", str(db)]).strip().splitlines()
        assert len(lines) == 1 and f"{home}/feedback" in lines[0] and "free some space" in lines[0], lines
        assert [p.name for p in (home / "feedback").iterdir()] == []  # no half import, no scratch folder
    finally:
        subprocess.run(["umount", "--lazy", str(home)], check=False)


# ---------------------------------------------------------------------------------------------------
# Signals


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _default_signals():
    """The child starts with default dispositions: a suite run under `nohup` ignores SIGHUP, and edgekit
    rightly keeps a signal its caller ignored, which is not what this test is about."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_to_bench_stops_its_runner_and_writes_nothing(signum, model, tmp_path, edgekit_home):
    out = tmp_path / "bench-out"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "bench", str(model), "--device", "desktop", "--runs", "100000",
         "--min-seconds", "300", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "EDGEKIT_HOME": str(edgekit_home)}, preexec_fn=_default_signals)
    runner = None
    try:
        deadline = time.time() + 120
        while runner is None:
            assert process.poll() is None and time.time() < deadline, process.communicate()
            runner = next((pid for pid, cmd in _children(process.pid) if "edgekit_runner.py bench" in cmd), None)
            time.sleep(0.1)
        group = os.getpgid(runner)
        time.sleep(1.0)  # let the runner get into its timing loop
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 128 + signum, err
        assert err.decode().strip().splitlines()[-1] == f"interrupted ({signal.Signals(signum).name})", err
        assert not _alive(runner), "the runner outlived edgekit"
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)  # nothing of its process group is left
        assert not out.exists()  # no half-written results
        assert not _parts(edgekit_home)
    finally:
        if process.poll() is None:
            process.kill()
        if runner is not None and _alive(runner):
            os.killpg(os.getpgid(runner), signal.SIGKILL)


@pytest.mark.parametrize("bad_home", ["read-only"], indirect=True)  # a full home fails when the report is written
def test_data_check_on_a_read_only_home_fails_before_scanning(bad_home, tmp_path, monkeypatch):
    kind, home = bad_home
    import edgekit.datacheck.check as check

    def scanned(*args, **kwargs):
        raise AssertionError("the folder was scanned before the output folder was checked")

    monkeypatch.setattr(check, "check_folder", scanned)
    lines = _failure(["data", "check", str(tmp_path)]).strip().splitlines()
    assert len(lines) == 1 and str(home) in lines[0] and "Read-only file system" in lines[0], lines
