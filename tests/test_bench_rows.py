"""Bench rows and results.json as types: a row round-trips through the file, old files are upgraded, a newer
or damaged one is one line naming the file and the field."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from edgekit.bench.advice import advise
from edgekit.bench.report import compare, results_csv, results_markdown
from edgekit.bench.rows import (
    RESULTS_SCHEMA_VERSION,
    BenchResults,
    BenchRow,
    DeviceAccuracy,
    DeviceEnvironment,
    LatencyStats,
    OutputCheck,
    Paired,
    Placement,
    VsFloat32,
    measured,
    read_results,
    write_results_json,
)
from edgekit.cli import app
from edgekit.errors import EdgekitError

cli = CliRunner()

CHECK = {"checked": 8, "max_abs_diff": 0.0039, "top1_flips": 0, "argmax_equal": True, "unit": "quantization steps",
         "max_steps": 1.0, "mean_steps": 0.125, "tolerance": 1.0, "equal": True}
LATENCY = {"n": 57, "mean": 1.21, "std": 0.05, "p50": 1.2, "p90": 1.3, "p99": 1.5, "min": 1.1, "max": 1.6}

# A results.json as edgekit wrote it before `schema_version`: flat rows that carried `n` beside
# `latency_ms`, an error row without any measured key, and a `suspect` row from the oldest versions.
OLD_RESULTS = {
    "device": "desktop", "created": "2026-11-20T10:00:00", "partial": True,
    "settings": {"threads": [1], "runs": 50, "warmup": 5, "min_seconds": 2.0, "delegate": None},
    "environment": {"host": "box", "versions": {"python": "3.11.7"}, "profile": "desktop", "address": None},
    "advice": {"pareto": [], "slower_than_float32": [], "recommended": None},
    "rows": [
        {"variant": "float32", "path": "/r/compressed/float32/model.tflite", "device": "desktop", "threads": 1,
         "threads_requested": 1, "delegate": "none", "size": 412345, "mode": "float32", "accuracy": 0.95,
         "accuracy_source": "host LiteRT, validation split", "device_accuracy": None, "status": "ok", "error": None,
         "inputs": "64 validation images", "runtime": "litert", "runtime_version": "2.3.0", "threads_capped": False,
         "latency_ms": {**LATENCY, "p50": 2.0}, "n": 57, "throughput_ips": 800.0, "peak_rss_mb": 40.5,
         "load_ms": 3.2, "first_ms": 4.1, "model_sha256": "ab" * 32, "output_check": CHECK,
         "environment": {"python": "3.11.7", "numpy": "1.26.4", "machine": "x86_64", "os": "Debian 12",
                         "kernel": "6.1", "cpu_model": "Xeon", "cpu_count": 2, "usable_cores": 2,
                         "memory_total_mb": 8000, "hostname": "box", "runtime": "litert",
                         "runtime_version": "2.3.0"},
         "paired": None, "bench_wall_s": 3.5, "pareto": True},
        {"variant": "int8-ptq", "path": "/r/compressed/int8-ptq/model.tflite", "device": "desktop", "threads": 1,
         "threads_requested": 1, "delegate": "none", "size": 120000, "mode": "int8", "accuracy": 0.94,
         "accuracy_source": "host LiteRT, validation split", "device_accuracy": None, "status": "suspect",
         "error": "outputs recorded while timing differ from the accuracy pass", "runtime": "litert",
         "runtime_version": "2.3.0", "latency_ms": LATENCY, "n": 57, "output_check": {"checked": 0}},
        {"variant": "dynamic", "path": "/r/compressed/dynamic/model.tflite", "device": "desktop", "threads": 1,
         "threads_requested": 1, "delegate": "none", "size": 130000, "mode": "dynamic", "accuracy": None,
         "accuracy_source": "not measured", "device_accuracy": None, "status": "error",
         "error": "desktop: connection refused", "latency_ms": {}, "n": None},
    ],
}


def _full_row() -> BenchRow:
    """A row with every sub-record set, as a measured, advised row has them."""
    return BenchRow(
        variant="int8-ptq", path="/r/compressed/int8-ptq/model.tflite",
        ran=Placement(device="pi", delegate="none", threads=2, threads_requested=4, threads_capped=True,
                      runtime="tflite_runtime", runtime_version="2.14.0"),
        size=120000, mode="int8", accuracy=0.94, accuracy_source="host LiteRT, validation split",
        device_accuracy=0.92, status="drift", error="tflite_runtime 2.14.0: outputs differ", inputs="64 images",
        latency_ms=LatencyStats(**LATENCY), throughput_ips=800.0, peak_rss_mb=40.5, load_ms=3.2, first_ms=4.1,
        model_sha256="cd" * 32, output_check=OutputCheck(**CHECK),
        environment=DeviceEnvironment(python="3.11.2", numpy="1.24.2", machine="aarch64", cpu_count=4),
        paired=Paired(baseline="float32", ratio=0.5, ci95=(0.45, 0.55), rounds=3, baseline_sha256="ab" * 32,
                      per_round=5, rounds_ms=((1.0, 2.0), (1.1, 2.1), (0.9, 1.9))),
        accuracy_check=DeviceAccuracy(samples=40, split="validation", host_accuracy=0.94, device_accuracy=0.92,
                                      device_runtime="tflite_runtime 2.14.0", output_check=OutputCheck(checked=40)),
        warning="p50 far from the reference", bench_wall_s=3.5, pareto=True,
        vs_float32=VsFloat32(p50_ratio=0.6, verdict="faster", ratio=0.5, ci95=(0.45, 0.55), rounds=3),
        slower_than_float32=None, recommended=True)


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_row_round_trips_through_results_json(tmp_path):
    row = _full_row()
    error_row = BenchRow(variant="dynamic", path="/m.tflite", ran=Placement(device="pi"), size=10, status="error",
                         error="pi: connection refused")
    written = BenchResults(device="pi", rows=(row, error_row), created="2026-12-03T10:00:00", partial=True,
                           settings={"threads": [2]}, environment={"host": "box"}, advice={"pareto": []})
    write_results_json(tmp_path / "results.json", written)
    raw = json.loads((tmp_path / "results.json").read_text())
    assert raw["schema_version"] == RESULTS_SCHEMA_VERSION
    # flat as before: what ran where sits beside the variant, under the keys readers and the CSV know
    first = raw["rows"][0]
    assert (first["device"], first["runtime"], first["threads"]) == ("pi", "tflite_runtime", 2)
    assert "ran" not in raw["rows"][0]
    again = read_results(tmp_path / "results.json")
    assert again == written and again.rows[0] == row and again.rows[1] == error_row


def test_rows_are_frozen_and_advice_returns_new_ones():
    row = _full_row()
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.status = "ok"
    plain = dataclasses.replace(row, status="ok", recommended=False, pareto=None, vs_float32=None, paired=None,
                                device_accuracy=None)
    baseline = dataclasses.replace(plain, variant="float32", mode="float32",
                                   latency_ms=dataclasses.replace(plain.latency_ms, p50=2.4))
    marked, advice = advise([baseline, plain], min_accuracy=0.9)
    assert plain.pareto is None and not plain.recommended  # the input rows are untouched
    assert [r.pareto for r in marked] == [False, True] and marked[1].recommended
    assert marked[1].vs_float32 == VsFloat32(p50_ratio=0.5, verdict="unknown")
    assert advice["recommended"]["variant"] == "int8-ptq"


def test_old_results_json_without_a_version_is_read_and_upgraded(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps(OLD_RESULTS))
    results = read_results(tmp_path / "old.json")
    assert results.schema_version == RESULTS_SCHEMA_VERSION and results.partial
    ok, suspect, error = results.rows
    assert ok.latency_ms.n == 57 and ok.latency_ms.p50 == 2.0 and ok.ran.runtime == "litert"
    assert ok.environment.cpu_model == "Xeon" and ok.output_check.equal and ok.pareto
    assert suspect.status == "drift" and suspect.output_check == OutputCheck(checked=0)
    assert error.status == "error" and error.latency_ms is None and error.ran.runtime is None
    # and it renders like any row: the figure, and `-` where nothing was measured
    table = results_markdown(list(results.rows))
    assert "| 2.00 |" in table and "drift: outputs recorded" in table and "error: desktop: connection" in table
    assert results_csv(list(results.rows)).splitlines()[1].startswith("float32,desktop,litert,2.3.0,none,1,1,")


def test_compare_reads_a_results_folder_from_before_the_version(tmp_path):
    """`bench --compare` of an old results.json (no schema_version) against a new one still works."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(OLD_RESULTS))
    new = read_results(tmp_path / "old" / "results.json")
    faster = dataclasses.replace(new.rows[0], latency_ms=dataclasses.replace(new.rows[0].latency_ms, p50=1.0),
                                 accuracy=0.96)
    (tmp_path / "new").mkdir()
    write_results_json(tmp_path / "new" / "results.json", dataclasses.replace(new, rows=(faster,)))
    result = cli.invoke(app, ["bench", "--compare", str(tmp_path / "old" / "results.json"), "--compare",
                              str(tmp_path / "new" / "results.json"), "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["rows"]
    assert row["variant"] == "float32" and row["p50_ratio"] == 0.5 and row["accuracy_delta"] == pytest.approx(0.01)
    text = cli.invoke(app, ["bench", "--compare", str(tmp_path / "old" / "results.json"),
                            str(tmp_path / "new" / "results.json")])
    assert "| float32 | none     | 1       | 2.00     | 1.00     | 0.50x | +1.0 pt    |" in text.stdout


@pytest.mark.parametrize("change, needles", [
    (lambda raw: {**raw, "schema_version": RESULTS_SCHEMA_VERSION + 1},
     ["schema version 3 is newer than this edgekit understands (2); upgrade edgekit"]),
    (lambda raw: {"study": "x", "trials": []}, ["not an edgekit bench results.json (no 'rows' list)"]),
    (lambda raw: {**raw, "rows": [{**raw["rows"][0], "threads": "two"}]}, ["rows[0]", "field 'threads'", "'two'"]),
    (lambda raw: {**raw, "rows": [{**raw["rows"][0], "latency_ms": {"p50": 1.0}}]},
     ["rows[0]", "field 'latency_ms'", "missing required field 'n'"]),
    (lambda raw: {**raw, "rows": [{**raw["rows"][0], "status": "fine"}]},
     ["rows[0]", "field 'status'", "ok, drift, error"]),
    (lambda raw: {**raw, "rows": [{**raw["rows"][0], "latncy_ms": {}}]}, ["rows[0]", "unknown field 'latncy_ms'"]),
    (lambda raw: "{damaged", ["not a readable bench results.json"]),
])
def test_newer_foreign_or_damaged_results_are_one_line_naming_file_and_field(tmp_path, change, needles):
    good = tmp_path / "good.json"
    write_results_json(good, BenchResults(device="pi", rows=(_full_row(),)))
    changed = change(json.loads(good.read_text()))
    bad = tmp_path / "bad.json"
    bad.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(EdgekitError) as error:
        compare(good, bad)
    assert "\n" not in str(error.value) and str(error.value).startswith(str(bad)), error.value
    for needle in needles:
        assert needle in str(error.value), error.value
    line = _one_line_error(cli.invoke(app, ["bench", "--compare", str(good), "--compare", str(bad)]))
    assert str(bad) in line


def test_runner_report_becomes_a_row_in_one_place_and_is_checked_like_input():
    row = BenchRow(variant="int8", path="/m.tflite", ran=Placement(device="pi", threads=4, threads_requested=4),
                   size=10)
    report = {"runtime": {"name": "tflite_runtime", "version": "2.14.0"}, "threads": 2, "threads_capped": True,
              "latency_ms": LATENCY, "throughput_ips": 800, "peak_rss_mb": 40.5, "load_ms": 3, "first_ms": 4.0,
              "model_sha256": "cd" * 32, "device": {"machine": "aarch64", "python": "3.11.2", "system": "Linux"},
              "versus": {"model_sha256": "ab" * 32, "per_round": 5, "rounds_ms": [[1.0, 2.0], [1.1, 2.1], [0.9, 2.0]]}}
    found = measured(row, report, CHECK, "pi: the runner's bench report", baseline="float32")
    assert found.ran == Placement(device="pi", threads=2, threads_requested=4, threads_capped=True,
                                  runtime="tflite_runtime", runtime_version="2.14.0")
    assert found.latency_ms == LatencyStats(**LATENCY) and found.load_ms == 3.0
    assert found.environment.machine == "aarch64" and found.environment.runtime == "tflite_runtime"
    assert found.paired.baseline == "float32" and found.paired.rounds == 3 and found.paired.ratio < 1
    assert row.latency_ms is None  # built once; the original is unchanged
    fallen_back = measured(row, {**report, "delegate_error": "edgetpu: not available (no device)"}, CHECK, "pi")
    assert (fallen_back.status, fallen_back.error) == ("error", "edgetpu: not available (no device)")
    with pytest.raises(EdgekitError, match=r"^pi: the runner's bench report: field 'latency_ms': field 'p90'"):
        measured(row, {**report, "latency_ms": {**LATENCY, "p90": "fast"}}, CHECK, "pi: the runner's bench report")
