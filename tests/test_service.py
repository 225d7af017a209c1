"""The systemd service and the device venv: the unit passes systemd-analyze, devices without systemd get
one line, and a profile's venv is created on first use with install hints that work under PEP 668."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.devices import load_profile, runner_path
from edgekit.errors import EdgekitError
from edgekit.service import ServiceSpec, systemd_quote, unit_text

cli = CliRunner()
ANALYZE = shutil.which("systemd-analyze")
HAS_SYSTEMD = os.path.isdir("/run/systemd/system")


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


def verify(tmp_path: Path, text: str, name: str = "edgekit-serve.service") -> subprocess.CompletedProcess:
    unit = tmp_path / name
    unit.write_text(text)
    return subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def make_unit(tmp_path: Path, spec: ServiceSpec, python: str = sys.executable, model: Path | None = None) -> str:
    model = model or tmp_path / "models" / "abc" / "model.tflite"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"stand-in")
    return unit_text(spec, python=python, runner=str(runner_path()), model=str(model), workdir=str(tmp_path),
                     user=getpass.getuser(), description="edgekit runner serve (model sha256 0123456789ab)")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is missing: apt-get install systemd (.ci/run does)")
@pytest.mark.parametrize("spec", [ServiceSpec("serve", ("--host", "0.0.0.0", "--port", "8080"), tls=True),
                                  ServiceSpec("live", ("/dev/video0", "--fps", "5", "--log-policy", "change"))],
                         ids=["serve", "live"])
def test_unit_passes_systemd_analyze_verify(tmp_path, spec):
    text = make_unit(tmp_path, spec)
    checked = verify(tmp_path, text, spec.unit_name)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr
    assert "Restart=on-failure" in text and f"User={getpass.getuser()}" in text
    assert f"EnvironmentFile=-{tmp_path}/runner.env" in text and "TOKEN" not in text.split("ExecStart=")[1]


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is missing: apt-get install systemd (.ci/run does)")
def test_awkward_paths_are_quoted_for_systemd_and_a_broken_unit_fails_verify(tmp_path):
    odd = tmp_path / "my models 100%" / "$HOME" / "model.tflite"
    text = make_unit(tmp_path, ServiceSpec("serve"), model=odd)
    checked = verify(tmp_path, text)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr
    assert systemd_quote(str(odd)) == f'"{tmp_path}/my models 100%%/$$HOME/model.tflite"'
    broken = verify(tmp_path, make_unit(tmp_path, ServiceSpec("serve"), python="/nonexistent/python3"))
    assert broken.returncode != 0 and "/nonexistent/python3" in broken.stderr  # the check can fail


def test_service_options_are_checked_before_anything_is_copied(tmp_path):
    with pytest.raises(EdgekitError, match="required: SOURCE"):
        ServiceSpec.parse("live", "--fps 5")
    with pytest.raises(EdgekitError, match="--port: '70000' is not a TCP port"):
        ServiceSpec.parse("serve", "--port 70000")
    with pytest.raises(EdgekitError, match="--service classify: must be one of serve, live"):
        ServiceSpec.parse("classify", None)
    with pytest.raises(EdgekitError, match="quote it"):
        ServiceSpec.parse("serve", "--host 'unterminated")
    assert ServiceSpec.parse("live", "/dev/video0 --fps 5").args == ("/dev/video0", "--fps", "5")
    with pytest.raises(EdgekitError, match="not absolute"):
        unit_text(ServiceSpec("serve"), python="python3", runner="/r.py", model="/m.tflite", workdir="/w", user="pi",
                  description="x")
    assert "needs a MODEL" in one_line_error(cli.invoke(app, ["deploy", "--device", "desktop"]))


@pytest.mark.skipif(HAS_SYSTEMD, reason="this host runs systemd; the no-systemd answer needs a host without it")
def test_device_without_systemd_gets_one_line_before_anything_is_copied(tmp_path, edgekit_home):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"stand-in: never copied, never loaded")
    line = one_line_error(cli.invoke(app, ["deploy", str(model), "--device", "desktop", "--service", "serve"]))
    assert "desktop: this device does not run systemd" in line and "start the runner" in line
    workdir = edgekit_home / "targets" / "desktop"
    assert not list(workdir.rglob("*.tflite")) and not list(workdir.rglob("*.service"))  # the device is untouched
    line = one_line_error(cli.invoke(app, ["deploy", "--device", "desktop", "--remove-service", "live"]))
    assert "does not run systemd" in line and "no edgekit service to remove" in line
    assert "can be installed" not in line


@pytest.mark.skipif(HAS_SYSTEMD, reason="this host runs systemd; the no-systemd answer needs a host without it")
def test_a_failed_service_install_leaves_no_unit_file_in_the_workdir(tmp_path):
    from edgekit.service import install_service
    from edgekit.transport.targets import make_target

    profile = load_profile(write_profile(tmp_path))
    target = make_target(profile)
    target.prepare()
    with pytest.raises(EdgekitError, match="does not run systemd"):
        install_service(target, profile, ServiceSpec("serve"), runner=target.path("edgekit_runner.py"),
                        model=target.path("models/abc/model.tflite"), model_sha256="0" * 64)
    assert not list(Path(target.workdir).glob("*.service"))


def write_profile(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "box.yaml"
    path.write_text(yaml.safe_dump({"description": "a local box", "arch": "any", "connection": "local",
                                    "workdir": str(tmp_path / "work"), **fields}))
    return path


@pytest.mark.slow
def test_doctor_creates_the_profile_venv_and_its_install_hints_use_it(tmp_path):
    venv = tmp_path / "device-venv"
    profile = write_profile(tmp_path, venv=str(venv), python=sys.executable)
    assert load_profile(profile).interpreter == str(venv / "bin" / "python")
    result = cli.invoke(app, ["doctor", "--device", str(profile), "--json"])
    report = json.loads(result.stdout)
    assert report["venv"]["created"] is True and (venv / "bin" / "python").exists()
    assert report["executable"] == str(venv / "bin" / "python")
    # the new venv sees the base interpreter's site-packages only, so numpy may be missing: if it is, the
    # hint installs into the venv, which PEP 668 allows
    pip = f"{venv / 'bin' / 'python'} -m pip install"
    assert all(line.startswith(pip) for line in report["missing"]), report["missing"]
    again = json.loads(cli.invoke(app, ["doctor", "--device", str(profile), "--json"]).stdout)
    assert again["venv"]["created"] is False


def test_a_venv_that_cannot_be_made_is_one_line(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 'error ensurepip is not available'\nexit 3\n")
    fake.chmod(0o755)
    profile = write_profile(tmp_path, venv=str(tmp_path / "v"), python=str(fake))
    line = one_line_error(cli.invoke(app, ["doctor", "--device", str(profile)]))
    assert "cannot create the venv" in line and "sudo apt install python3-venv" in line
