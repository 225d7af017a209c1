"""What a Raspberry Pi user meets on the way to a working device (issue 23), checked without emulation.

The emulated-Pi versions of these (a real bookworm arm64 userland under qemu-user) are in test_pi_emu.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from test_service import write_profile

from edgekit.bench.report import results_markdown
from edgekit.bench.rows import BenchRow
from edgekit.bench.run import differs_from_host
from edgekit.devices import load_profile, runner_path
from edgekit.errors import EdgekitError

HOST = {"runtime": "litert", "runtime_version": "2.3.0", "machine": "x86_64"}


def _bench_row(**fields):
    row = {"variant": "int8", "path": "int8.tflite", "device": "pi", "runtime": "litert", "runtime_version": "2.3.0",
           "delegate": "none", "threads": 4, "size": 4000, "accuracy": 0.9, "device_accuracy": None, "status": "ok",
           "error": None,
           "latency_ms": {"mean": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0, "min": 1.0, "max": 1.0, "n": 5},
           "environment": {"python": "3.11.2", "numpy": "1.24.2", "machine": "x86_64", "runtime": "litert",
                           "runtime_version": "2.3.0", "cpu_model": "Raspberry Pi 4 Model B Rev 1.2",
                           "cpu_count": 4, "os": "Debian GNU/Linux 12 (bookworm)"}}
    row.update(fields)
    return BenchRow.from_dict(row, "test row")


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
    assert row.output_check.checked == 8 and row.output_check.equal, row.output_check
    assert row.status == "ok", row.error


# ---------------------------------------------------------------------------------------------------
# Hints paste (point 3), the desktop keeps its numpy (point 4), installs keep apt's numpy (point 2)


def _pasteable(hint: str) -> list[list[str]]:
    """Every line of a hint as the shell splits it, with each pip requirement parsed as pip parses it."""
    from packaging.requirements import Requirement

    commands = []
    for line in hint.splitlines():
        argv = shlex.split(line)
        assert argv and not argv[-1].endswith((",", ";", ".")), line
        if argv[1:4] == ["-m", "pip", "install"] or argv[1:3] == ["-m", "pip"]:
            for requirement in argv[argv.index("install") + 1:]:
                Requirement(requirement)  # raises InvalidRequirement for 'ai-edge-litert,'
        commands.append(argv)
    return commands


def test_install_hints_on_a_bookworm_pi_are_commands_that_paste(runner, monkeypatch):
    monkeypatch.setattr(runner, "externally_managed", lambda: True)
    monkeypatch.setattr(runner, "debian_python", lambda: True)
    monkeypatch.setattr(runner, "system_numpy", lambda: "1.24.2")
    monkeypatch.setattr(runner, "needs_own_venv", lambda version: False)
    hints = runner.install_hints()
    venv, pip = _pasteable(hints["litert"])
    assert venv == ["python3", "-m", "venv", "--system-site-packages", "~/edgekit/venv"]
    assert pip == ["~/edgekit/venv/bin/python", "-m", "pip", "install", "ai-edge-litert", "numpy==1.24.2"]
    assert "~/edgekit/venv/bin/python -m pip" in hints["litert"]  # ~ left for the shell to expand
    assert _pasteable(hints["numpy"]) == [["sudo", "apt", "install", "python3-numpy"]]
    assert _pasteable(hints["opencv"]) == [["sudo", "apt", "install", "python3-opencv"]]
    assert _pasteable(hints["edgetpu"]) == [["sudo", "apt-get", "install", "libedgetpu1-std"]]
    for hint in hints.values():
        _pasteable(hint)


def test_install_hints_inside_the_venv_pin_the_system_numpy(runner, monkeypatch):
    monkeypatch.setattr(runner, "externally_managed", lambda: False)
    monkeypatch.setattr(runner, "debian_python", lambda: False)
    monkeypatch.setattr(runner, "system_numpy", lambda: "1.24.2")
    monkeypatch.setattr(runner, "needs_own_venv", lambda version: False)
    hints = runner.install_hints()
    [pip] = _pasteable(hints["litert"])
    assert pip[:4] == [sys.executable, "-m", "pip", "install"] and pip[4:] == ["ai-edge-litert", "numpy==1.24.2"]
    [tflrt] = _pasteable(hints["tflite_runtime"])
    assert tflrt[4:] == ["tflite-runtime", "numpy<2"]


def test_desktop_doctor_never_suggests_numpy_below_2_in_edgekits_own_environment(runner):
    # this interpreter holds TensorFlow and numpy 2: `pip install tflite-runtime "numpy<2"` here would break them
    hint = runner.install_hints()["tflite_runtime"]
    commands = _pasteable(hint)
    assert not any(argv[0] == sys.executable for argv in commands), hint
    assert commands[0][:3] == ["python3", "-m", "venv"] and commands[1][0] == f"{runner.TFLRT_VENV}/bin/python"
    assert "numpy<2" in commands[1]


def test_doctor_missing_lines_are_each_one_command(runner, tmp_path):
    # numpy and Pillow hidden: the runner's doctor still runs and lists what to run, one command per item
    for name in ("numpy", "PIL"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    done = subprocess.run([sys.executable, str(runner_path()), "doctor", "--json"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    report = json.loads(done.stdout)
    assert report["missing"] and done.returncode == 1
    for line in report["missing"]:
        assert len(_pasteable(line)) == 1, line


def test_fix_installs_the_runtime_with_numpy_pinned_to_the_systems(tmp_path):
    from edgekit.device_python import fix_requirements

    pi = load_profile(write_profile(tmp_path, venv="~/edgekit/venv"))
    report = {"numpy": "1.24.2", "numpy_system": "1.24.2", "pillow": "9.4.0",
              "runtimes": [{"name": "litert", "available": False}, {"name": "tflite_runtime", "available": False}]}
    assert fix_requirements(pi, report) == ["ai-edge-litert", "numpy==1.24.2"]
    report["runtimes"][0]["available"] = True
    assert fix_requirements(pi, report) == []
    tflrt = load_profile(write_profile(tmp_path, venv="~/v", runtime="tflite_runtime"))
    bare = {"numpy": None, "numpy_system": None, "pillow": None, "runtimes": []}
    assert fix_requirements(tflrt, bare) == ["tflite-runtime", "pillow", "numpy<2"]


def test_fix_without_a_venv_says_to_add_one(tmp_path):
    from edgekit.device_python import fix

    profile = load_profile(write_profile(tmp_path))
    with pytest.raises(EdgekitError, match="add `venv: ~/edgekit/venv` to"):
        fix(None, profile, {"missing": ["x"]})


# ---------------------------------------------------------------------------------------------------
# A half-made venv is not reused (point 1)


@pytest.mark.slow
def test_a_venv_that_failed_halfway_is_removed_and_a_half_made_one_is_repaired(tmp_path, monkeypatch):
    from edgekit.device_python import ensure_venv
    from edgekit.transport.targets import make_target

    base = shutil.which("python3") or sys.executable
    venv = tmp_path / "v"
    profile = load_profile(write_profile(tmp_path, python=base, venv=str(venv)))
    target = make_target(profile)
    target.prepare()
    # a Pi without python3-venv: venv makes bin/python, then ensurepip fails
    hook = tmp_path / "no-ensurepip"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import subprocess\n_real = subprocess.check_output\n"
        "def _check_output(cmd, *a, **k):\n"
        "    if 'ensurepip' in cmd:\n"
        "        raise subprocess.CalledProcessError(1, cmd, output=b'ensurepip is not available')\n"
        "    return _real(cmd, *a, **k)\n"
        "subprocess.check_output = _check_output\n")
    monkeypatch.setenv("PYTHONPATH", str(hook))
    with pytest.raises(EdgekitError, match="sudo apt install python3-venv"):
        ensure_venv(target, profile)
    assert not venv.exists()  # nothing half-made left to be taken for a venv next time
    monkeypatch.delenv("PYTHONPATH")
    # a half-made venv from an older edgekit: bin/python, no pip, system site-packages off
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    made = ensure_venv(target, profile)
    assert made["created"] and made["repaired"] == "system site-packages off", made
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import pip"]).returncode == 0
    assert ensure_venv(target, profile)["created"] is False


def test_doctor_points_edgekit_users_at_the_profile_venv_and_doctor_fix(tmp_path):
    from edgekit.deploy import _next_steps

    missing = {"missing": ["sudo apt install python3-numpy"]}
    bare = load_profile(write_profile(tmp_path, connection="ssh", host="pi.local"))
    steps = _next_steps(bare, missing)
    assert steps[0] == f"add `venv: ~/edgekit/venv` to {bare.source}"
    assert shlex.split(steps[1]) == ["edgekit", "doctor", "--device", bare.source, "--fix"]
    assert _next_steps(load_profile("desktop"), missing) == []  # never pip into edgekit's own environment
    assert _next_steps(bare, {"missing": []}) == []


def test_fix_uninstalls_a_venv_numpy_that_hides_apts_and_reinstalls_the_runtime_against_apts(tmp_path):
    from edgekit.device_python import fix

    class Recorder:
        calls = []

        def run(self, argv, *, timeout, what):
            self.calls.append(argv[argv.index("--disable-pip-version-check") + 1:])
            return 0, b"", ""

    pi = load_profile(write_profile(tmp_path, venv="~/edgekit/venv"))
    hidden = {"numpy": "2.4.6", "numpy_system": "1.24.2", "pillow": "9.4.0",
              "runtimes": [{"name": "litert", "available": True}]}
    target = Recorder()
    done = fix(target, pi, hidden)
    assert target.calls == [["uninstall", "-y", "numpy"], ["install", "ai-edge-litert", "numpy==1.24.2"]]
    assert done == {"uninstalled": ["numpy 2.4.6"], "installed": ["ai-edge-litert", "numpy==1.24.2"]}
