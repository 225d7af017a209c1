"""`edgekit bench`: the table, the files, the checks, local and over a real SSH connection."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import sshd_fixture
import yaml
from typer.testing import CliRunner

from edgekit.bench.accuracy import compare, verdict
from edgekit.bench.advice import advice_markdown, advise
from edgekit.bench.paired import ratio_interval
from edgekit.bench.paired import verdict as paired_verdict
from edgekit.bench.rows import BenchRow, LatencyStats, Paired, Placement, VsFloat32
from edgekit.bench.run import BenchSettings, collect_variants, run_bench
from edgekit.cli import app
from edgekit.devices import load_profile, parse_profile

cli = CliRunner()
QUICK = ["--runs", "20", "--warmup", "2", "--min-seconds", "0.2"]


@pytest.fixture(scope="module")
def bench_run(tiny_run, variants, tmp_path_factory):
    """A private copy of the tiny run with its float32 and int8 variants (bench writes into the run)."""
    run = tmp_path_factory.mktemp("bench") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("compressed", "bench"))
    for name, source in variants.items():
        shutil.copytree(source, run / "compressed" / name)
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
        if row["variant"] == "int8-ptq":  # timed against float32 in interleaved rounds, at its thread count
            assert row["paired"]["rounds"] >= 2 and row["paired"]["ci95"][0] <= row["paired"]["ratio"]
            assert row["vs_float32"]["verdict"] in ("slower", "faster", "no measurable difference")
        else:
            assert row["paired"] is None
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
    [inputs] = (tmp_path / "device" / "inputs").glob("*.npz")  # the inputs travelled, named by their content
    assert inputs.name == f"{hashlib.sha256(inputs.read_bytes()).hexdigest()[:16]}.npz"


def test_sha_mismatch_becomes_an_error_row_and_the_rest_still_run(bench_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(bench_run, run, ignore=shutil.ignore_patterns("bench"))
    with open(run / "compressed" / "float32" / "model.tflite", "ab") as handle:
        handle.write(b"\0")
    result = run_bench(collect_variants([run]), load_profile("desktop"),
                       BenchSettings(runs=5, warmup=1, min_seconds=0.1))
    rows = {r.variant: r for r in result.rows}
    assert rows["float32"].status == "error" and "sha256" in rows["float32"].error
    assert rows["int8-ptq"].status == "ok" and result.partial


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
    spelled = cli.invoke(app, ["bench", "--compare", str(tmp_path / "a" / "results.json"),
                               str(tmp_path / "b" / "results.json"), "--json"])  # as the README once wrote it
    assert spelled.exit_code == 0, spelled.output
    assert json.loads(spelled.stdout)["rows"] == rows


def test_deploy_puts_the_same_sha256_on_the_device(bench_run, sshd, tmp_path):
    profile = _loopback(sshd, tmp_path)
    result = cli.invoke(app, ["deploy", str(bench_run / "compressed" / "int8-ptq"), "--device", str(profile),
                              "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    manifest = json.loads((bench_run / "compressed" / "int8-ptq" / "manifest.json").read_text())
    assert payload["model_sha256"] == manifest["files"]["model.tflite"]["sha256"]
    assert parse_profile(profile, yaml.safe_load(profile.read_text())).name == "loopback"


# ------------------------------------------------ any model, the device's runtime, memory and accuracy

TFLITE_RUNTIME_PYTHON = os.environ.get("EDGEKIT_TEST_TFLITE_RUNTIME_PYTHON", "/tmp/tflrt/bin/python")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Three .tflite models edgekit did not make: two inputs, int8 I/O conv net, non-image dense."""
    import foreign as builders

    return builders.build_all(tmp_path_factory.mktemp("foreign"))


def _tflite_runtime_profile(tmp_path, runtime="tflite_runtime"):
    """A cheap real 'device' with another runtime: a local venv holding tflite-runtime and numpy<2."""
    if not Path(TFLITE_RUNTIME_PYTHON).is_file():
        pytest.skip(f"no tflite-runtime venv at {TFLITE_RUNTIME_PYTHON}: create it with `python3 -m venv "
                    "/tmp/tflrt && /tmp/tflrt/bin/pip install 'numpy<2' tflite-runtime pillow` (.ci/run does) "
                    "or set EDGEKIT_TEST_TFLITE_RUNTIME_PYTHON")
    path = tmp_path / "tflrt.yaml"
    path.write_text(yaml.safe_dump({"name": "tflrt", "description": "tflite-runtime venv", "arch": "any",
                                    "connection": "local", "python": TFLITE_RUNTIME_PYTHON, "runtime": runtime,
                                    "threads": 1, "workdir": str(tmp_path / "tflrt-device")}))
    return path


@pytest.mark.slow
def test_any_model_is_benchmarked_on_generated_inputs(foreign, tmp_path):
    out = tmp_path / "o"
    result = cli.invoke(app, ["bench", *map(str, foreign.values()), "--device", "desktop", "--threads", "1",
                              "--out", str(out), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in json.loads(result.stdout)["rows"]}
    assert set(rows) == {"two_input", "int8_conv", "dense"}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["accuracy"] is None and row["accuracy_source"] == "not measured"
        assert row["inputs"].startswith("generated") and row["output_check"]["equal"]
    assert rows["two_input"]["inputs"].count("float32 uniform") == 2  # both inputs fed
    assert "int8 uniform over -128..127" in rows["int8_conv"]["inputs"]
    assert rows["int8_conv"]["output_check"]["unit"] == "quantization steps"
    markdown = (out / "results.md").read_text()
    assert "not measured" in markdown and "generated" in markdown


@pytest.mark.slow
def test_images_for_a_multi_input_model_is_one_error_row_and_the_rest_run(bench_run, foreign, digits_folder,
                                                                          tmp_path):
    result = cli.invoke(app, ["bench", str(bench_run / "compressed" / "int8-ptq" / "model.tflite"),
                              str(foreign["two-input"]), "--device", "desktop", "--threads", "1", "--images",
                              str(digits_folder), "--out", str(tmp_path / "o"), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["int8-ptq"]["status"] == "ok" and "images from" in rows["int8-ptq"]["inputs"]
    error = rows["two_input"]["error"]
    assert rows["two_input"]["status"] == "error" and "\n" not in error
    assert "this model takes 2 inputs" in error and "drop --images" in error


def test_images_refusal_names_the_part_of_the_model_that_is_not_a_classifier():
    from types import SimpleNamespace as T

    from edgekit.bench.inputs import _not_a_classifier

    rgb, scores = T(shape=(1, 32, 32, 3)), T(shape=(1, 10))
    two_outputs = T(inputs=(rgb,), outputs=(scores, T(shape=(1, 4))))
    assert _not_a_classifier(two_outputs) == "its input is RGB but it has 2 outputs ([1, 10], [1, 4]), not one [1, N]"
    assert _not_a_classifier(T(inputs=(T(shape=(1, 16000)),), outputs=(scores,))) == \
        "its input is [1, 16000], not [1, H, W, 3] RGB"
    assert _not_a_classifier(T(inputs=(rgb,), outputs=(T(shape=(1, 8, 8, 2)),))) == \
        "its output is [1, 8, 8, 2], not [1, N] class scores"


def test_a_foreign_models_results_go_under_edgekit_home_not_beside_it(foreign, edgekit_home, tmp_path):
    elsewhere = tmp_path / "site-packages" / "somepkg"
    elsewhere.mkdir(parents=True)
    model = elsewhere / "dense.tflite"
    shutil.copy(foreign["dense"], model)
    result = cli.invoke(app, ["bench", str(model), "--device", "desktop", "--threads", "1", "--json", *QUICK])
    assert result.exit_code == 0, result.output
    out = Path(json.loads(result.stdout)["out_dir"])
    sha = hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    assert out.parent == edgekit_home / "bench" / f"dense-{sha}" and (out / "results.json").is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["dense.tflite"]


def test_runtime_not_installed_on_the_device_is_an_error_row(foreign, tmp_path):
    profile = _tflite_runtime_profile(tmp_path, runtime="litert")  # the venv has no LiteRT
    result = cli.invoke(app, ["bench", str(foreign["dense"]), "--device", str(profile), "--out",
                              str(tmp_path / "o"), "--json", *QUICK])
    [row] = json.loads(result.stdout)["rows"]
    assert result.exit_code == 1 and row["status"] == "error"
    assert "--runtime litert: not installed" in row["error"] and "pip install ai-edge-litert" in row["error"]


def test_model_the_device_runtime_cannot_load_is_an_error_row(foreign, tmp_path):
    broken = tmp_path / "broken.tflite"
    content = foreign["dense"].read_bytes()
    broken.write_bytes(content[:8] + b"\xff" * 64)  # the TFL3 header, then garbage
    result = cli.invoke(app, ["bench", str(broken), str(foreign["dense"]), "--device", "desktop", "--threads", "1",
                              "--out", str(tmp_path / "o"), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["broken"]["status"] == "error" and "broken.tflite" in rows["broken"]["error"]
    assert "\n" not in rows["broken"]["error"] and rows["dense"]["status"] == "ok"


@pytest.mark.slow
def test_tflite_runtime_device_runs_its_own_accuracy_pass(bench_run, tmp_path, monkeypatch):
    from edgekit.bench import accuracy
    from edgekit.transport.targets import Target

    monkeypatch.setattr(accuracy, "CHUNK_BYTES", 16 * 32 * 32 * 3 * 4)  # 16 images of 32 px per predict call
    calls = []
    run_runner = Target.run_runner
    monkeypatch.setattr(Target, "run_runner", lambda self, args, *a, **k: calls.append(args[0]) or
                        run_runner(self, args, *a, **k))
    profile = _tflite_runtime_profile(tmp_path)
    result = cli.invoke(app, ["bench", str(bench_run / "compressed" / "int8-ptq"), "--device", str(profile),
                              "--accuracy-samples", "40", "--out", str(tmp_path / "o"), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["rows"]
    assert (row["runtime"], row["runtime_version"]) == ("tflite_runtime", "2.14.0")
    assert row["environment"]["numpy"].startswith("1.") and row["environment"]["runtime"] == "tflite_runtime"
    check = row["accuracy_check"]
    assert check["samples"] == 40 and 0 <= row["device_accuracy"] <= 1
    assert calls.count("predict") == 3  # 16 + 16 + 8: the split streams over in chunks, never whole
    assert not list((tmp_path / "tflrt-device" / "inputs").glob("accuracy-*"))  # its chunk file is removed
    assert check["device_runtime"] == "tflite_runtime 2.14.0"
    steps = check["output_check"]
    assert steps["unit"] == "quantization steps" and steps["tolerance"] == 1.0
    assert row["status"] == ("ok" if steps["equal"] and row["output_check"]["equal"] else "drift")


def test_litert_rows_skip_the_device_accuracy_pass_and_cap_threads(bench_run, tmp_path):
    result = run_bench(collect_variants([bench_run / "compressed" / "int8-ptq"]), load_profile("desktop"),
                       BenchSettings(threads=(64,), runs=5, warmup=1, min_seconds=0.1))
    [row] = result.rows
    assert row.status == "ok" and row.ran.runtime == "litert" and row.device_accuracy is None
    cores = len(os.sched_getaffinity(0))
    assert row.ran.threads_requested == 64 and row.ran.threads == cores and row.ran.threads_capped
    environment = dataclasses.asdict(row.environment)
    for key in ("python", "numpy", "runtime", "runtime_version", "cpu_model", "cpu_count", "memory_total_mb", "os"):
        assert environment[key], key
    assert result.device["environment"] == environment


def test_peak_memory_is_the_runners_own_not_its_parents(foreign):
    ballast = np.ones(2**27)  # 1 GiB held and touched by this (parent) process
    result = run_bench(collect_variants([foreign["dense"]]), load_profile("desktop"),
                       BenchSettings(threads=(1,), runs=5, warmup=1, min_seconds=0.1))
    [row] = result.rows
    assert ballast.sum() == 2**27
    assert row.status == "ok" and 0 < row.peak_rss_mb < 300, row.peak_rss_mb


def test_output_check_counts_quantization_steps_and_marks_drift():
    output = {"dtype": "int8", "quantization": {"scale": 1 / 256, "zero_point": -128}}
    host = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    one_step = compare(host + 1 / 256, host, output)
    assert one_step["equal"] and one_step["max_steps"] == 1.0 and verdict(one_step) is None
    drifted = compare(host + np.array([[0, 0.3, 0], [0, 0, 0]]), host, output)
    assert not drifted["equal"] and drifted["max_steps"] == pytest.approx(76.8) and drifted["top1_flips"] == 1
    assert "76.8 quantization steps (tolerance 1)" in verdict(drifted)


def _row(variant, p50, accuracy, mode=None, threads=1, rounds=None, baseline_sha256="sha-float32"):
    latency = LatencyStats(n=5, mean=p50, p50=p50, p90=p50, p99=p50, min=p50, max=p50)
    paired = None
    if rounds is not None:  # interleaved rounds against the float32 row: [this model ms, float32 ms]
        paired = Paired(baseline="float32", baseline_sha256=baseline_sha256, **ratio_interval(rounds))
    return BenchRow(variant=variant, path=f"{variant}.tflite", ran=Placement(device="pi", threads=threads),
                    size=1000, latency_ms=latency, accuracy=accuracy, mode=mode, model_sha256=f"sha-{variant}",
                    paired=paired)


def test_paired_rounds_tell_a_real_slowdown_from_noise():
    steady = ratio_interval([[1.30 * b, b] for b in (7.0, 7.4, 7.1, 7.6, 7.2, 7.3)])
    assert steady["ratio"] == pytest.approx(1.30) and paired_verdict(steady, 1.05) == "slower"
    noisy = ratio_interval([[8.9, 7.0], [7.1, 7.6], [8.5, 7.2], [7.0, 7.8], [8.8, 7.1], [7.3, 7.4]])
    assert 1.0 < noisy["ratio"] < 1.15 and noisy["ci95"][0] < 1.0 < noisy["ci95"][1]
    assert paired_verdict(noisy, 1.05) == "no measurable difference"
    small = ratio_interval([[1.02 * b, b] for b in (7.0, 7.4, 7.1, 7.6)])
    assert small["ci95"][0] > 1.0 and paired_verdict(small, 1.05) == "no measurable difference"  # real, but < 5%
    assert paired_verdict(ratio_interval([[0.5 * b, b] for b in (7.0, 7.4, 7.1)]), 1.05) == "faster"
    assert ratio_interval([[8.0, 7.0], [8.0, 7.0]]) is None and paired_verdict(None, 1.05) == "unknown"


def test_advice_flags_slower_only_when_interleaved_rounds_confirm_it():
    noise = [[7.6, 7.0], [7.0, 7.7], [7.9, 7.1], [7.2, 7.6], [7.8, 7.0], [7.1, 7.5]]
    rows = [_row("float32", 7.0, 0.95, "float32"), _row("float16", 7.9, 0.95, "float16", rounds=noise),
            _row("dynamic", 7.9, 0.95, "dynamic")]
    rows, advice = advise(rows)
    assert advice["slower_than_float32"] == [] and not any(r.slower_than_float32 for r in rows)
    float16, dynamic = advice["no_measurable_difference"]
    assert "float16" in float16 and "no measurable difference" in float16 and "95% CI" in float16
    assert "dynamic" in dynamic and "not confirmed by interleaved rounds" in dynamic
    assert rows[1].vs_float32.verdict == "no measurable difference" and rows[1].vs_float32.rounds == 6
    assert rows[2].vs_float32 == VsFloat32(p50_ratio=1.129, verdict="unknown")
    text = advice_markdown(advice)
    assert "do not ship" not in text and "Not slower than float32" in text
    # rounds against another float32 file do not count
    other = _row("float16", 7.9, 0.95, "float16", rounds=noise, baseline_sha256="sha-of-another-file")
    assert advise([_row("float32", 7.0, 0.95, "float32"), other])[1]["no_measurable_difference"][0].endswith(
        "to decide)")


def test_advice_names_the_frontier_the_slow_variants_and_a_pick():
    slow = [[13.5 * f, 7.4 * f] for f in (1.0, 1.02, 0.98, 1.01, 0.99)]
    rows = [_row("float32", 7.4, 0.95, "float32"), _row("dynamic", 13.5, 0.95, "dynamic", rounds=slow),
            _row("int8", 3.0, 0.94, "int8"), _row("float16", 7.6, 0.95, "float16")]
    marked, advice = advise(rows, max_latency_ms=5.0)
    assert [r.variant for r in marked if r.pareto] == ["float32", "int8"]
    assert len(advice["slower_than_float32"]) == 1 and "dynamic" in advice["slower_than_float32"][0]
    assert marked[1].slower_than_float32 == 1.82 and advice["recommended"]["variant"] == "int8"
    assert [r.variant for r in marked if r.recommended] == ["int8"] and not any(r.pareto for r in rows)
    assert advise(rows, min_accuracy=0.95)[1]["recommended"]["variant"] == "float32"
    assert advise(rows, max_latency_ms=1.0)[1]["recommended"] is None
    text = advice_markdown(advise(rows, min_accuracy=0.95)[1])
    assert "Slower than float32" in text and "Recommended**: float32" in text


def test_doctor_text_shows_everything_the_json_has(tmp_path):
    profile = _tflite_runtime_profile(tmp_path)
    text = cli.invoke(app, ["doctor", "--device", str(profile)])
    payload = json.loads(cli.invoke(app, ["doctor", "--device", str(profile), "--json"]).stdout)
    assert text.exit_code == 0, text.output

    def leaves(value):
        if isinstance(value, dict):
            return [leaf for v in value.values() for leaf in leaves(v)]
        if isinstance(value, list):
            return [leaf for v in value for leaf in leaves(v)]
        return [value]

    for leaf in leaves(payload):
        if isinstance(leaf, str) and leaf:
            assert leaf in text.stdout, leaf
    assert "runtimes:" in text.stdout and "edgetpu:" in text.stdout


def test_doctor_tables_fit_100_columns_unless_wide(tmp_path):
    """Long install commands and errors move under the runtimes table, whole; --wide keeps them as columns."""
    profile = _tflite_runtime_profile(tmp_path)
    narrow = cli.invoke(app, ["doctor", "--device", str(profile)])
    wide = cli.invoke(app, ["doctor", "--device", str(profile), "--wide"])
    assert narrow.exit_code == 0 and wide.exit_code == 0, narrow.output + wide.output
    header = next(line for line in narrow.stdout.splitlines() if line.split()[:2] == ["name", "available"])
    assert "install" not in header and len(header) <= 100
    table = narrow.stdout.split("runtimes:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = [line for line in table if " install: " not in line and " error: " not in line]
    assert rows and all(len(line) <= 100 for line in rows), table
    commands = [line for line in table if " install: " in line]
    assert commands and all(line.split(" install: ", 1)[1] in wide.stdout for line in commands)
    wide_header = next(line for line in wide.stdout.splitlines() if line.split()[:2] == ["name", "available"])
    assert wide_header.split()[-1] == "install" and max(map(len, wide.stdout.splitlines())) > 100


def test_deploy_pins_the_runtime_and_checks_it_loads_there(foreign, tmp_path):
    profile = _tflite_runtime_profile(tmp_path)
    result = cli.invoke(app, ["deploy", str(foreign["int8-conv"]), "--device", str(profile), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["runtime"] == {"name": "tflite_runtime", "version": "2.14.0"}
    assert payload["classify"].endswith("--runtime tflite_runtime")
    refused = cli.invoke(app, ["deploy", str(foreign["int8-conv"]), "--device", str(profile), "--runtime", "litert"])
    assert refused.exit_code == 1 and "does not load with runtime litert" in refused.output
    assert "Traceback" not in refused.output
