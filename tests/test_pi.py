"""What a Raspberry Pi user meets on the way to a working device (issue 23), checked without emulation.

The emulated-Pi versions of these (a real bookworm arm64 userland under qemu-user) are in test_pi_emu.py.
"""

from __future__ import annotations

from edgekit.bench.report import results_markdown
from edgekit.bench.run import differs_from_host

HOST = {"runtime": "litert", "runtime_version": "2.3.0", "machine": "x86_64"}


def _bench_row(**fields):
    row = {"variant": "int8", "device": "pi", "runtime": "litert", "runtime_version": "2.3.0", "delegate": "none",
           "threads": 4, "size": 4000, "accuracy": 0.9, "device_accuracy": None, "status": "ok", "error": None,
           "latency_ms": {"mean": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0, "min": 1.0, "max": 1.0, "n": 5},
           "environment": {"python": "3.11.2", "numpy": "1.24.2", "machine": "x86_64", "runtime": "litert",
                           "runtime_version": "2.3.0", "cpu_model": "Raspberry Pi 4 Model B Rev 1.2",
                           "cpu_count": 4, "os": "Debian GNU/Linux 12 (bookworm)"}}
    row.update(fields)
    return row


def test_device_accuracy_runs_when_only_the_runtime_version_or_the_machine_differs():
    assert differs_from_host(_bench_row(), HOST) == []
    assert differs_from_host(_bench_row(runtime_version="2.1.0"), HOST) == ["litert 2.1.0 (host 2.3.0)"]
    arm = _bench_row(environment={"machine": "aarch64"})
    assert differs_from_host(arm, HOST) == ["aarch64 (host x86_64)"]
    assert differs_from_host(_bench_row(delegate="edgetpu"), HOST) == ["delegate edgetpu"]
    assert differs_from_host(_bench_row(runtime="tflite_runtime"), HOST) == ["runtime tflite_runtime (host litert)"]


def test_row_says_when_only_the_quick_output_check_ran():
    quick = {"checked": 8, "unit": "quantization steps", "max_steps": 1.0, "equal": True, "top1_flips": 0}
    table = results_markdown([_bench_row(output_check=quick)])
    assert "quick check only: 8 samples, max 1 steps" in table
    measured = results_markdown([_bench_row(output_check=quick, device_accuracy=0.88)])
    assert "0.8800" in measured and "quick check" not in measured


def test_table_has_one_environment_line_per_device_with_python_and_numpy():
    rows = [_bench_row(), _bench_row(variant="float32"), _bench_row(device="desktop", environment={
        "python": "3.12.3", "numpy": "2.1.0", "machine": "x86_64", "runtime": "litert", "runtime_version": "2.3.0"})]
    lines = [line for line in results_markdown(rows).splitlines() if line.startswith("- environment of")]
    assert len(lines) == 2
    assert "pi: Python 3.11.2, numpy 1.24.2, litert 2.3.0" in lines[0] and "Raspberry Pi 4" in lines[0]
    assert "desktop: Python 3.12.3, numpy 2.1.0" in lines[1]


def test_stateful_model_is_compared_like_with_like_not_reported_as_drift(tmp_path):
    from foreign import stateful_model

    from edgekit.bench.run import BenchSettings, collect_variants, run_bench
    from edgekit.devices import load_profile

    model = stateful_model(tmp_path / "streaming.tflite")
    result = run_bench(collect_variants([model]), load_profile("desktop"),
                       BenchSettings(threads=(1,), runs=20, warmup=3, min_seconds=0.05))
    [row] = result.rows
    assert row["output_check"]["checked"] == 8 and row["output_check"]["equal"], row["output_check"]
    assert row["status"] == "ok", row["error"]
