"""edgekit on an emulated Raspberry Pi: Raspberry Pi OS bookworm's arm64 userland under qemu-user, with the
aarch64 wheels a Pi installs (LiteRT + numpy 2, tflite-runtime 2.14 + numpy 1.26) and apt's own Python.

The tooling is `shared/pi-emu` beside the repository (read-only; it builds under /tmp). `.ci/run` runs its
setup and exports EDGEKIT_TEST_PI_EMU; locally:

    ../shared/pi-emu/setup.sh
    VROOT=/tmp/pi-root-venv EXTRA_PKGS=python3-opencv ../shared/pi-emu/make_venv_root.sh  # 900 MB with OpenCV
    NO_VENV=1 VROOT=/tmp/pi-root-novenv ../shared/pi-emu/make_venv_root.sh
    EDGEKIT_TEST_PI_EMU=$PWD/../shared/pi-emu pytest -m slow tests/test_pi_emu.py

Without it (or without qemu) every test here skips and says why. Under emulation numpy takes ~3 s to
import, so each test runs few runner processes on the 4 KB `tiny_int8.tflite`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import sshd_fixture
import yaml
from PIL import Image
from typer.testing import CliRunner

from edgekit.bench.accuracy import compare, output_info
from edgekit.cli import app
from edgekit.devices import runner_path

pytestmark = pytest.mark.slow
cli = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
PI_EMU = Path(os.environ.get("EDGEKIT_TEST_PI_EMU") or ROOT.parent / "shared" / "pi-emu")
PI_ROOT = Path(os.environ.get("PI_ROOT", "/tmp/pi-root"))
SITES = {"litert": Path(os.environ.get("PI_SITE_LITERT", "/tmp/pi-site-litert")),
         "tflrt": Path(os.environ.get("PI_SITE_TFLRT", "/tmp/pi-site-tflrt"))}
VENV_ROOT = Path(os.environ.get("EDGEKIT_TEST_PI_VENV_ROOT", "/tmp/pi-root-venv"))  # apt python3-venv, numpy
NOVENV_ROOT = Path(os.environ.get("EDGEKIT_TEST_PI_NOVENV_ROOT", "/tmp/pi-root-novenv"))  # before python3-venv
VENV_WHEELS = Path(os.environ.get("EDGEKIT_TEST_PI_WHEELS", "/tmp/pi-work/wheels-venv-litert"))
LITERT_WHEELS = Path(os.environ.get("PI_WORK", "/tmp/pi-work")) / "wheels-litert"  # setup.sh's: numpy 2
RUNTIME_NAMES = {"litert": "litert", "tflrt": "tflite_runtime"}
TIMEOUT = 600  # one emulated command; a loaded 2-core machine is slow


def emulation_problem() -> str | None:
    """Why the emulated Pi cannot run here, or None."""
    if os.environ.get("EDGEKIT_TEST_PI_EMU_SKIP"):
        return os.environ["EDGEKIT_TEST_PI_EMU_SKIP"]
    if not (PI_EMU / "pyrun.sh").is_file():
        return f"no pi-emu tooling at {PI_EMU} (set EDGEKIT_TEST_PI_EMU to the shared/pi-emu folder)"
    if shutil.which("qemu-aarch64-static") is None:
        return "qemu-aarch64-static is not installed: run shared/pi-emu/setup.sh (it installs qemu-user-static)"
    for folder in (PI_ROOT, *SITES.values()):
        if not (folder / ".complete").is_file():
            return f"{folder} is not built: run {PI_EMU / 'setup.sh'}"
    return None


@pytest.fixture(scope="module", autouse=True)
def emulated_pi():
    problem = emulation_problem()
    if problem:
        pytest.skip(f"emulated Raspberry Pi unavailable: {problem}")


def pyrun(wheels: str, *args, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(PI_EMU / "pyrun.sh"), wheels, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def host_runner(*args) -> subprocess.CompletedProcess:
    """The same runner file on this host with LiteRT: the reference the device is compared with."""
    return subprocess.run([sys.executable, str(runner_path()), *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """The tiny int8 classifier (32x32x3 in, 4 logits), three images and the same pixels as an .npz."""
    folder = tmp_path_factory.mktemp("pi-tiny")
    model = folder / "tiny_int8.tflite"
    shutil.copy(PI_EMU / "tiny_int8.tflite", model)
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(23)
    pixels = []
    for i in range(3):
        array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(array).save(images / f"img{i}.png")
        pixels.append(array.astype(np.float32))
    np.savez(folder / "x.npz", x=np.stack(pixels))
    return {"model": model, "images": images, "npz": folder / "x.npz", "folder": folder}


def steps_from_host(device_outputs, host_outputs, model: Path) -> dict:
    output = output_info(model)
    scale, zero = output["quantization"]["scale"], output["quantization"]["zero_point"]
    scale, zero = (scale[0], zero[0]) if isinstance(scale, list) else (scale, zero)

    def dequantize(raw):
        return (np.asarray(raw, np.float64) - zero) * scale

    return compare(dequantize(device_outputs), dequantize(host_outputs), output)


@pytest.mark.parametrize("wheels", ["litert", "tflrt"])
def test_runner_on_the_emulated_pi_classifies_serves_and_benches_like_host_litert(tiny, wheels, tmp_path):
    runner = str(runner_path())
    host = json.loads(host_runner("predict", tiny["model"], "--images", tiny["npz"]).stdout)
    done = pyrun(wheels, runner, "predict", tiny["model"], "--images", tiny["npz"])
    assert done.returncode == 0, done.stderr
    device = json.loads(done.stdout)
    assert device["runtime"]["name"] == RUNTIME_NAMES[wheels] and device["device"]["machine"] == "aarch64"
    check = steps_from_host(device["outputs"], host["outputs"], tiny["model"])
    assert check["checked"] == 3 and check["unit"] == "quantization steps" and check["equal"], check

    classified = pyrun(wheels, runner, "classify", tiny["model"], tiny["images"], "--json", "--no-log")
    assert classified.returncode == 0, classified.stderr
    expected = json.loads(host_runner("classify", tiny["model"], tiny["images"], "--json", "--no-log").stdout)
    top = [(Path(r["path"]).name, r["top_k"][0]["index"]) for r in json.loads(classified.stdout)]
    assert top == [(Path(r["path"]).name, r["top_k"][0]["index"]) for r in expected]

    bench = pyrun(wheels, runner, "bench", tiny["model"], "--images", tiny["npz"], "--runs", "5", "--warmup", "1",
                  "--min-seconds", "0.05", "--json")
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["latency_ms"]["n"] >= 5 and report["device"]["numpy"] and report["sequence"][:3] == [0, 1, 0]

    log = tmp_path / "serve.log"
    with open(log, "w") as stderr:
        server = subprocess.Popen([str(PI_EMU / "pyrun.sh"), wheels, runner, "serve", str(tiny["model"]),
                                   "--port", "0", "--no-log"], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.time() + TIMEOUT
        while not (found := re.search(r"http://\S+:(\d+)", log.read_text())):
            assert server.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        base = f"http://127.0.0.1:{found.group(1)}"
        with urllib.request.urlopen(base + "/health", timeout=60) as response:
            assert json.loads(response.read())["status"] == "ok"
        body = (tiny["images"] / "img0.png").read_bytes()
        request = urllib.request.Request(base + "/predict", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            served = json.loads(response.read())
        assert served["top_k"][0]["index"] == expected[0]["top_k"][0]["index"]
    finally:
        server.kill()
        server.wait()


# ---------------------------------------------------------------------------------------------------
# edgekit doctor / deploy / bench / feedback pull against the emulated Pi over a real SSH connection


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from sshd_fixture.serve(tmp_path_factory)


def test_edgekit_drives_an_emulated_pi_over_ssh_end_to_end(sshd, tiny, tmp_path):
    profile = tmp_path / "pi-emu.yaml"
    profile.write_text(yaml.safe_dump(sshd.profile(tmp_path / "device", arch="aarch64", threads=4,
                                                   python=str(PI_EMU / "ssh-target" / "pipy-litert"),
                                                   description="emulated Raspberry Pi 4 (qemu-user)")))
    device = ["--device", str(profile)]
    doctor = cli.invoke(app, ["doctor", *device, "--json"])
    assert doctor.exit_code == 0, doctor.output
    report = json.loads(doctor.stdout)
    assert report["machine"] == "aarch64" and report["selected_runtime"] == "litert" and report["ok"]
    assert report["warnings"] == [] and "Raspberry Pi" in report["cpu_model"]

    deployed = cli.invoke(app, ["deploy", str(tiny["model"]), *device, "--json"])
    assert deployed.exit_code == 0, deployed.output
    assert json.loads(deployed.stdout)["runtime"]["name"] == "litert"

    bench = cli.invoke(app, ["bench", str(tiny["model"]), *device, "--runs", "5", "--warmup", "1",
                             "--min-seconds", "0.05", "--out", str(tmp_path / "bench"), "--json"])
    assert bench.exit_code == 0, bench.output
    [row] = json.loads(bench.stdout)["rows"]
    assert row["status"] == "ok" and row["environment"]["machine"] == "aarch64", row
    assert row["output_check"]["checked"] and row["output_check"]["equal"], row["output_check"]
    assert "aarch64" in (tmp_path / "bench" / "results.md").read_text()  # the device's environment line

    # predictions logged on the device by its runner, then pulled back
    from edgekit.devices import load_profile
    from edgekit.transport.targets import make_target

    pi = load_profile(str(profile))
    target = make_target(pi)
    target.prepare()
    target.put(tiny["images"] / "img0.png", "inbox/img0.png")
    code, out, err = target.run([pi.interpreter, "edgekit_runner.py", "classify", json.loads(deployed.stdout)["model"],
                                 "inbox/img0.png", "--json"], timeout=TIMEOUT, what="classify")
    assert code == 0 and json.loads(out)[0]["id"], err
    pulled = cli.invoke(app, ["feedback", "pull", *device, "--json"])
    assert pulled.exit_code == 0, pulled.output
    assert json.loads(pulled.stdout)["predictions"] >= 1


# ---------------------------------------------------------------------------------------------------
# The PEP 668 venv path on apt's Python: python3-venv absent, then present; apt's numpy kept (points 1, 2)


@pytest.fixture(scope="module")
def venv_roots():
    for root in (VENV_ROOT, NOVENV_ROOT):
        if not (root / "usr" / "bin" / "python3").exists():
            pytest.skip(f"no apt-based root at {root}: build it with {PI_EMU / 'make_venv_root.sh'} "
                        "(NO_VENV=1 for the one without python3-venv)")
    if not list(VENV_WHEELS.glob("ai_edge_litert-*.whl")):
        download_venv_wheels()
    return {"venv": VENV_ROOT / "usr" / "bin" / "python3", "novenv": NOVENV_ROOT / "usr" / "bin" / "python3"}


def download_venv_wheels() -> None:
    """The aarch64 wheels `doctor --fix` installs (LiteRT with apt's numpy 1.24.2), fetched natively once so
    the emulated pip installs offline."""
    platforms = ["linux_aarch64", "manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in
                                                              (17, 24, 26, 27, 28, 31, 34, 36)]
    argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
            "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none", "-d", str(VENV_WHEELS),
            *[word for platform in platforms for word in ("--platform", platform)], "ai-edge-litert",
            "numpy==1.24.2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode:
        pytest.skip(f"cannot download the aarch64 wheels for the venv test: {done.stderr.strip()[-300:]}")


def test_venv_path_on_apt_python_without_then_with_python3_venv_keeps_apt_numpy(venv_roots, tmp_path,
                                                                                monkeypatch):
    venv = tmp_path / "venv"

    def profile(python: Path) -> str:
        path = tmp_path / f"pi-{python.parents[2].name}.yaml"
        path.write_text(yaml.safe_dump({"description": "emulated bookworm Pi with apt's Python", "arch": "aarch64",
                                        "connection": "local", "python": str(python), "venv": str(venv),
                                        "workdir": str(tmp_path / "work")}))
        return str(path)

    refused = cli.invoke(app, ["doctor", "--device", profile(venv_roots["novenv"])])
    assert refused.exit_code == 1 and "sudo apt install python3-venv" in refused.output, refused.output
    assert not venv.exists()  # point 1: no half-made venv left to be reused

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the emulated pip installs from the wheels fetched above
    monkeypatch.setenv("PIP_FIND_LINKS", str(VENV_WHEELS))
    fixed = cli.invoke(app, ["doctor", "--device", profile(venv_roots["venv"]), "--fix", "--json"])
    assert fixed.exit_code == 0, fixed.output
    report = json.loads(fixed.stdout)
    assert report["venv"]["created"] and report["fixed"]["installed"] == ["ai-edge-litert", "numpy==1.24.2"]
    assert report["selected_runtime"] == "litert" and report["ok"], report
    assert report["numpy"] == report["numpy_system"] == "1.24.2"  # point 2: apt's numpy still the one in use
    assert report["warnings"] == []
    if not list(VENV_ROOT.glob("usr/lib/python3/dist-packages/cv2*")):  # a root without EXTRA_PKGS=python3-opencv
        return
    assert report["features"]["opencv"]["available"], report["features"]  # apt's OpenCV still imports
    # The breakage: a plain `pip install ai-edge-litert` put numpy 2 (and ml_dtypes built for it) in the venv
    wheels = [*LITERT_WHEELS.glob("numpy-2*.whl"), *LITERT_WHEELS.glob("ml_dtypes-*.whl")]
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels)],
                   check=True, timeout=TIMEOUT)
    broken = json.loads(cli.invoke(app, ["doctor", "--device", profile(venv_roots["venv"]), "--json"]).stdout)
    assert not broken["features"]["opencv"]["available"] and broken["features"]["opencv"]["installed"]
    assert any("hides the system's numpy 1.24.2" in line for line in broken["warnings"]), broken["warnings"]
    assert broken["next"] == [f"edgekit doctor --device {profile(venv_roots['venv'])} --fix"]
    repaired = json.loads(cli.invoke(app, ["doctor", "--device", profile(venv_roots["venv"]), "--fix",
                                           "--json"]).stdout)
    assert repaired["fixed"]["uninstalled"] and repaired["numpy"] == "1.24.2" and repaired["warnings"] == []
    assert repaired["features"]["opencv"]["available"] and repaired["selected_runtime"] == "litert"
