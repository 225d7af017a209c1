"""`edgekit bench`: the table, the files, the checks, local and over a real SSH connection."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import sshd_fixture
import yaml
from typer.testing import CliRunner

from edgekit.bench.run import BenchSettings, collect_variants, run_bench
from edgekit.cli import app
from edgekit.compress.pipeline import compress
from edgekit.devices import load_profile, parse_profile
from edgekit.recipes import load_recipe

cli = CliRunner()
QUICK = ["--runs", "20", "--warmup", "2", "--min-seconds", "0.2"]


@pytest.fixture(scope="module")
def bench_run(tiny_run, tmp_path_factory):
    """A private copy of the tiny run with float32 and int8 variants (bench writes into the run)."""
    run = tmp_path_factory.mktemp("bench") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("compressed", "bench"))
    for name in ("float32", "int8-ptq"):
        source = tiny_run / "compressed" / name
        if source.is_dir():
            shutil.copytree(source, run / "compressed" / name)
        else:
            compress(run, load_recipe(name))
    return run


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from sshd_fixture.serve(tmp_path_factory)


def _loopback(sshd, tmp_path, **fields):
    path = tmp_path / "loopback.yaml"
    data = sshd.profile(tmp_path / "device", python=sys.executable, **fields)
    path.write_text(yaml.safe_dump(data))
    return path


def test_desktop_bench_writes_the_table_and_files(bench_run, tmp_path):
    out = tmp_path / "results"
    result = cli.invoke(app, ["bench", str(bench_run), "--device", "desktop", "--threads", "1,2", "--out", str(out),
                              "--json", *QUICK])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = payload["rows"]
    assert {(r["variant"], r["threads"]) for r in rows} == {(v, t) for v in ("float32", "int8-ptq") for t in (1, 2)}
    for row in rows:
        assert row["status"] == "ok", row
        latency = row["latency_ms"]
        assert latency["n"] >= 20 and latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
        assert row["runtime"] == "litert" and row["accuracy"] is not None and row["peak_rss_mb"] > 0
        assert row["output_check"]["checked"] > 0 and row["output_check"]["equal"], row["output_check"]
    for name in ("results.json", "results.csv", "results.md", "pareto.png", "manifest.json"):
        assert (out / name).is_file(), name
    environment = json.loads((out / "results.json").read_text())["environment"]
    assert environment["versions"]["tensorflow"] and environment["host_cpu"]


def test_bench_over_ssh_on_the_loopback_device(bench_run, sshd, tmp_path):
    out = tmp_path / "remote"
    profile = _loopback(sshd, tmp_path)
    result = cli.invoke(app, ["bench", str(bench_run / "compressed" / "int8-ptq"), "--device", str(profile),
                              "--out", str(out), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["rows"]
    assert row["status"] == "ok" and row["device"] == "loopback" and row["output_check"]["equal"]
    assert (tmp_path / "device" / "bench_inputs.npz").is_file()  # the inputs travelled to the device


def test_sha_mismatch_becomes_an_error_row_and_the_rest_still_run(bench_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(bench_run, run, ignore=shutil.ignore_patterns("bench"))
    with open(run / "compressed" / "float32" / "model.tflite", "ab") as handle:
        handle.write(b"\0")
    result = run_bench(collect_variants([run]), load_profile("desktop"),
                       BenchSettings(runs=5, warmup=1, min_seconds=0.1))
    rows = {r["variant"]: r for r in result.rows}
    assert rows["float32"]["status"] == "error" and "sha256" in rows["float32"]["error"]
    assert rows["int8-ptq"]["status"] == "ok" and result.partial


def test_edgetpu_row_says_not_available_and_cpu_rows_still_run(bench_run, tmp_path):
    result = cli.invoke(app, ["bench", str(bench_run / "compressed" / "int8-ptq"), "--device", "desktop",
                              "--delegate", "edgetpu", "--out", str(tmp_path / "o"), "--json", *QUICK])
    rows = json.loads(result.stdout)["rows"]
    cpu = [r for r in rows if r["delegate"] == "none"]
    tpu = [r for r in rows if r["delegate"] == "edgetpu"]
    assert cpu and cpu[0]["status"] == "ok"
    assert tpu and tpu[0]["status"] == "error" and tpu[0]["error"].startswith("edgetpu: not available")


def test_unreachable_device_keeps_partial_results(bench_run, sshd, tmp_path):
    profile = _loopback(sshd, tmp_path, port=sshd_fixture.free_port())
    out = tmp_path / "o"
    result = cli.invoke(app, ["bench", str(bench_run), "--device", str(profile), "--out", str(out), *QUICK])
    assert result.exit_code == 1
    saved = json.loads((out / "results.json").read_text())
    assert saved["partial"] and all(r["status"] == "error" for r in saved["rows"])
    assert "127.0.0.1" in saved["rows"][0]["error"]


def test_unknown_device_lists_the_known_ones(bench_run):
    result = cli.invoke(app, ["bench", str(bench_run), "--device", "toaster"])
    assert result.exit_code == 1 and "toaster" in result.output and "rpi4" in result.output


def test_profile_with_a_missing_field_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("description: no connection given\narch: aarch64\n")
    result = cli.invoke(app, ["doctor", "--device", str(path)])
    assert result.exit_code == 1 and "broken.yaml" in result.output and "Traceback" not in result.output


def test_compare_two_results(bench_run, tmp_path):
    for name in ("a", "b"):
        cli.invoke(app, ["bench", str(bench_run), "--device", "desktop", "--threads", "1", "--out",
                         str(tmp_path / name), *QUICK])
    result = cli.invoke(app, ["bench", "--compare", str(tmp_path / "a" / "results.json"), "--compare",
                              str(tmp_path / "b" / "results.json"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert {r["variant"] for r in rows} == {"float32", "int8-ptq"} and all(r["p50_ratio"] > 0 for r in rows)


def test_deploy_puts_the_same_sha256_on_the_device(bench_run, sshd, tmp_path):
    profile = _loopback(sshd, tmp_path)
    result = cli.invoke(app, ["deploy", str(bench_run / "compressed" / "int8-ptq"), "--device", str(profile),
                              "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    manifest = json.loads((bench_run / "compressed" / "int8-ptq" / "manifest.json").read_text())
    assert payload["model_sha256"] == manifest["files"]["model.tflite"]["sha256"]
    assert parse_profile(profile, yaml.safe_load(profile.read_text())).name == "loopback"
