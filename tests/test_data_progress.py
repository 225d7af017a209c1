"""Progress of the passes over files: a line before the work, counts that mean what they say, sane estimates."""

from __future__ import annotations

import io
import logging
import os
import sys

import numpy as np
from PIL import Image

from edgekit.data import filecache
from edgekit.data.filecache import FileResults, Progress, per_file


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_estimate_until_there_is_a_sample_then_a_sane_one():
    """The first file pays for loading TensorFlow (8 s here); the estimate must come from the rate after it."""
    clock, out = Clock(), io.StringIO()
    bar = Progress(1000, "hashing images", stream=out, clock=clock)
    assert out.getvalue() == "hashing images: 1,000 file(s) to do\n"  # said before any work, as future work
    clock.now += 8.0
    bar.update()  # the slow first file
    assert bar.eta(clock.now) is None
    for _ in range(4):
        clock.now += 0.1
        bar.update()
    assert bar.eta(clock.now) is None  # 0.4 s and 4 files after the first: too little to go on
    for _ in range(45):
        clock.now += 0.1
        bar.update()
    eta = bar.eta(clock.now)
    assert eta is not None and abs(eta - 950 * 0.1) < 1.0  # 0.1 s per file, not (8 s + ...) / 50
    assert "50 of 1,000 file(s), 13 s, about 1 min 35 s left" in bar.line(clock.now)


def test_log_lines_come_every_few_seconds_and_the_last_says_done():
    clock, out = Clock(), io.StringIO()
    with Progress(40, "checking data", stream=out, clock=clock) as bar:
        for _ in range(40):
            clock.now += 0.5
            bar.update()
    lines = out.getvalue().splitlines()
    assert lines[0] == "checking data: 40 file(s) to do"
    assert lines[1].startswith("checking data: 10 of 40 file(s), 5 s")  # the first progress after LOG_EVERY
    assert lines[-1] == "checking data: done, 40 file(s) in 20 s"
    assert all("of 40" in line for line in lines[1:-1])


def test_a_failed_pass_does_not_say_done():
    out = io.StringIO()
    try:
        with Progress(5, "hashing images", stream=out, clock=Clock()) as bar:
            bar.update()
            raise KeyError("boom")
    except KeyError:
        pass
    assert out.getvalue().splitlines()[-1].startswith("hashing images: stopped after 1 of 5 file(s)")


def test_a_terminal_gets_one_line_redrawn_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    clock, out = Clock(), Tty()
    with Progress(3, "checking data", stream=out, clock=clock) as bar:
        for _ in range(3):
            clock.now += 1
            bar.update()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("checking data: done, 3 file(s) in 3 s\n")
    assert text.startswith("\r\x1b[Kchecking data: 3 file(s) to do\r")


def test_a_folder_pass_prints_its_plan_before_the_work_and_done_after(tmp_path, edgekit_home, monkeypatch,
                                                                       caplog):
    """Through per_file, as the scan and the hashing run it; a second pass over unchanged files says nothing."""
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(path)
        paths.append(str(path))
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    seen_at_work = []
    caplog.set_level(logging.INFO, logger="edgekit")

    def work(path):
        seen_at_work.append(err.getvalue())
        return [1]

    cache = FileResults("test", "x", 1)
    per_file(paths, work, cache, "checking pictures")
    assert all(text.startswith("checking pictures: 5 file(s) to do\n") for text in seen_at_work)
    assert "done" not in seen_at_work[0]
    assert err.getvalue().splitlines()[-1].startswith("checking pictures: done, 5 file(s) in ")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(paths[0])  # one changed file
    os.utime(paths[0], ns=(1, 1))
    err.truncate(0), err.seek(0)
    per_file(paths, work, FileResults("test", "x", 1), "checking pictures")
    assert err.getvalue().splitlines()[0] == "checking pictures: 1 file(s) to do (4 unchanged since the last run)"
    err.truncate(0), err.seek(0)
    per_file(paths, work, FileResults("test", "x", 1), "checking pictures")
    assert err.getvalue() == ""  # nothing to do: no line


def test_quiet_runs_and_library_use_print_nothing(monkeypatch, caplog):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    caplog.set_level(logging.WARNING, logger="edgekit")
    with filecache.progress(3, "hashing images") as bar:
        bar.update(3)
    assert err.getvalue() == ""


def test_data_check_says_what_it_will_do_then_that_it_is_done(tmp_path, edgekit_home):
    """Through the CLI on a small folder: the plan of each pass before its result, and no tqdm bar."""
    from typer.testing import CliRunner

    from edgekit.cli import app

    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.default_rng(i + len(cls)).integers(0, 256, (12, 12, 3), np.uint8)).save(
                tmp_path / "data" / cls / f"{i}.png")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith(("checking ", "hashing images"))]
    checking = [line for line in lines if line.startswith("checking ")]
    assert checking[0] == f"checking {tmp_path / 'data'}: 6 file(s) to do" and "done, 6 file(s) in" in checking[-1]
    hashing_lines = [line for line in lines if line.startswith("hashing images")]
    assert hashing_lines[0] == "hashing images: 6 file(s) to do" and "done, 6 file(s)" in hashing_lines[-1]
    assert lines.index(checking[-1]) < lines.index(hashing_lines[0])  # one pass ends before the next begins
    assert "it/s" not in result.stderr and "img/s" not in result.stderr
