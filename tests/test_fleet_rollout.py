"""Fleet rollouts end to end on one machine: local devices (own work directories) and devices over the
loopback sshd, each running the real runner as a detached `live` process over a folder of images."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import sshd_fixture  # noqa: E402

from edgekit.cli import app  # noqa: E402
from edgekit.device_state import CURRENT  # noqa: E402

SERVICE = "live incoming --existing --log-policy all"
FAST = ["--shadow", "4s", "--settle", "1s"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from sshd_fixture.serve(tmp_path_factory)


def write_fleet(tmp_path: Path, images: Path, local: int = 3, ssh=None, ssh_count: int = 0) -> Path:
    devices = {}
    for n in range(1, local + 1):
        devices[f"cam-{n}"] = {"connection": "local", "workdir": f"./cam-{n}", "service": SERVICE}
    for n in range(1, ssh_count + 1):
        devices[f"pi-{n}"] = {**ssh.profile(tmp_path / f"pi-{n}", python=sys.executable), "service": SERVICE}
        del devices[f"pi-{n}"]["description"]
    for name in devices:
        shutil.copytree(images, tmp_path / name / "incoming")
    names = list(devices)
    fleet = {"name": "test-plant", "devices": devices,
             "groups": {"canary": names[:1], "line-2": names[1:]}}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


def cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout


def current(tmp_path: Path, device: str) -> dict:
    return json.loads((tmp_path / device / CURRENT).read_text())


def serving_args(tmp_path: Path, device: str) -> list[str] | None:
    try:
        pid = int((tmp_path / device / "service.pid").read_text())
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (OSError, ValueError):
        return None


@pytest.fixture
def stop_runners(tmp_path):
    yield
    for pid_file in tmp_path.rglob("service.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def deployed_fleet(tmp_path, models, images, **kwargs) -> Path:
    fleet = write_fleet(tmp_path, images, **kwargs)
    code, out = cli("fleet", "deploy", models["base"].parent, fleet, "--json")
    assert code == 0, out
    return fleet


def rollout_manifest(home: Path) -> dict:
    [path] = list((home / "fleet" / "test-plant" / "rollouts").glob("*/manifest.json"))
    return json.loads(path.read_text())


@pytest.mark.slow
def test_rollout_that_passes_promotes_every_wave_local_and_ssh(sshd, fleet_models, fleet_images, tmp_path,
                                                               edgekit_home, stop_runners):
    fleet = deployed_fleet(tmp_path, fleet_models, fleet_images, local=2, ssh=sshd, ssh_count=2)
    base_sha = current(tmp_path, "cam-1")["model_sha256"]
    code, out = cli("fleet", "rollout", fleet_models["same"], fleet, "--waves", "canary,all", *FAST, "--json")
    assert code == 0, out
    manifest = json.loads(out)
    assert manifest["state"] == "done" and [w["state"] for w in manifest["waves"]] == ["promoted", "promoted"]
    assert manifest["waves"][0]["devices"] == ["cam-1"] and "@" in manifest["who"]
    for name in ("cam-1", "cam-2", "pi-1", "pi-2"):
        entry = manifest["devices"][name]
        assert entry["state"] == "promoted" and entry["gate"]["agreement"] == 1.0 and entry["gate"]["rows"] >= 1
        state = current(tmp_path, name)
        assert state["model_sha256"] == manifest["variant"]["sha256"] and state["previous"]["model_sha256"] == base_sha
        args = serving_args(tmp_path, name)
        assert args and state["model"] in args and "--shadow" not in args  # serving the candidate, no shadow
    assert rollout_manifest(edgekit_home) == {k: v for k, v in manifest.items() if k != "manifest"}


@pytest.mark.slow
def test_rollout_failing_its_gate_rolls_the_wave_back_and_stops(fleet_models, fleet_images, tmp_path, edgekit_home,
                                                                stop_runners):
    fleet = deployed_fleet(tmp_path, fleet_models, fleet_images)
    before = current(tmp_path, "cam-1")
    code, out = cli("fleet", "rollout", fleet_models["other"], fleet, "--waves", "canary,line-2", *FAST)
    assert code == 1
    manifest = rollout_manifest(edgekit_home)
    assert manifest["state"] == "rolled-back" and "agreement 0.0000 < 0.97" in manifest["reason"]
    assert manifest["reason"].startswith("wave canary: cam-1:") and "\n" not in manifest["reason"]
    assert [manifest["devices"][n]["state"] for n in ("cam-1", "cam-2", "cam-3")] == ["rolled-back", "pending",
                                                                                       "pending"]
    assert current(tmp_path, "cam-1")["model_sha256"] == before["model_sha256"]
    args = serving_args(tmp_path, "cam-1")
    assert args and before["model"] in args and "--shadow" not in args  # the old model serves again, alone
    assert serving_args(tmp_path, "cam-2") is None  # the second wave was never touched
    assert "rolled-back" in out and "agreement" in out


@pytest.mark.slow
def test_device_dropping_mid_rollout_fails_and_its_wave_rolls_back(fleet_models, fleet_images, tmp_path,
                                                                   edgekit_home, stop_runners):
    from edgekit.fleet import rollout as rollouts
    from edgekit.fleet.inventory import load_fleet

    fleet = load_fleet(deployed_fleet(tmp_path, fleet_models, fleet_images))
    settings = rollouts.RolloutSettings(waves=("canary", "line-2"), shadow_s=6, min_agreement=0.9, settle_s=0.5)
    rollout = rollouts.start(fleet, fleet_models["same"], settings, progress=open(os.devnull, "w"))  # noqa: SIM115
    done: list = []
    worker = threading.Thread(target=lambda: done.append(rollout.run()))
    worker.start()
    deadline = time.monotonic() + 120
    while rollout_manifest(edgekit_home)["devices"]["cam-2"]["state"] != "shadow":
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.2)
    (tmp_path / "cam-2").rename(tmp_path / "cam-2-gone")  # the device drops off during its shadow period
    worker.join(timeout=180)
    manifest = done[0]
    assert manifest["state"] == "rolled-back" and "cam-2" in manifest["reason"]
    assert "does not exist" in manifest["devices"]["cam-2"]["error"]
    states = {n: manifest["devices"][n]["state"] for n in ("cam-1", "cam-2", "cam-3")}
    assert states == {"cam-1": "promoted", "cam-2": "failed", "cam-3": "rolled-back"}
    assert current(tmp_path, "cam-3")["model_sha256"] != manifest["variant"]["sha256"]


@pytest.mark.slow
def test_killed_rollout_resumes_and_finishes(fleet_models, fleet_images, tmp_path, edgekit_home, stop_runners):
    fleet = deployed_fleet(tmp_path, fleet_models, fleet_images, local=2)
    argv = [sys.executable, "-m", "edgekit.cli", "fleet", "rollout", str(fleet_models["same"]), str(fleet),
            "--waves", "canary,all", "--shadow", "6s", "--settle", "0.5s"]
    env = {**os.environ, "EDGEKIT_HOME": str(edgekit_home),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and proc.poll() is None
            paths = list((edgekit_home / "fleet" / "test-plant" / "rollouts").glob("*/manifest.json"))
            if paths and rollout_manifest(edgekit_home)["devices"]["cam-1"]["state"] == "shadow":
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the host dies in the middle of the canary's shadow period
        proc.wait()
    assert rollout_manifest(edgekit_home)["state"] == "running"
    code, out = cli("fleet", "rollout", fleet_models["same"], fleet, "--resume", "--json")
    assert code == 0, out
    manifest = json.loads(out)
    assert manifest["state"] == "done" and manifest["id"] == rollout_manifest(edgekit_home)["id"]
    assert all(manifest["devices"][n]["state"] == "promoted" for n in ("cam-1", "cam-2"))
    again = CliRunner().invoke(app, ["fleet", "rollout", str(fleet_models["same"]), str(fleet), "--resume"])
    assert again.exit_code == 1 and "no unfinished rollout" in again.output


@pytest.mark.slow
def test_resume_abort_rolls_the_wave_in_flight_back(fleet_models, fleet_images, tmp_path, edgekit_home,
                                                    stop_runners):
    from edgekit.fleet import rollout as rollouts
    from edgekit.fleet.inventory import load_fleet

    fleet = load_fleet(deployed_fleet(tmp_path, fleet_models, fleet_images, local=1))
    settings = rollouts.RolloutSettings(waves=("canary",), shadow_s=60, min_agreement=0.9)
    rollout = rollouts.start(fleet, fleet_models["same"], settings, progress=open(os.devnull, "w"))  # noqa: SIM115
    rollout._stage(fleet.devices["cam-1"])  # as far as a host got before it died
    assert "--shadow" in serving_args(tmp_path, "cam-1")
    code, out = cli("fleet", "rollout", fleet_models["same"], fleet.source, "--resume", "--abort")
    assert code == 1
    manifest = rollout_manifest(edgekit_home)
    assert manifest["state"] == "aborted" and manifest["devices"]["cam-1"]["state"] == "rolled-back"
    assert "--shadow" not in serving_args(tmp_path, "cam-1")


@pytest.mark.slow
def test_crash_after_promotion_rolls_the_wave_back(fleet_models, fleet_images, tmp_path, edgekit_home,
                                                   stop_runners):
    fleet = deployed_fleet(tmp_path, fleet_models, fleet_images, local=2)
    before = current(tmp_path, "cam-1")
    # The candidate passes its shadow check but its service dies right after the promotion restart.
    from edgekit.fleet import services

    real_start = services.start

    def start(target, device, service, model, sha, **kwargs):
        done = real_start(target, device, service, model, sha, **kwargs)
        if sha != before["model_sha256"] and not kwargs.get("shadow"):
            os.kill(done["pid"], signal.SIGKILL)
        return done

    services.start, original = start, services.start
    try:
        code, out = cli("fleet", "rollout", fleet_models["same"], fleet, "--waves", "all", *FAST)
    finally:
        services.start = original
    assert code == 1
    manifest = rollout_manifest(edgekit_home)
    assert manifest["state"] == "rolled-back" and "the runner exited after the restart" in manifest["reason"]
    for name in ("cam-1", "cam-2"):
        assert manifest["devices"][name]["state"] == "rolled-back"
        assert current(tmp_path, name)["model_sha256"] == before["model_sha256"]
        args = serving_args(tmp_path, name)
        assert args and before["model"] in args


class FakeSystemd:
    """A target whose `systemctl` answers are canned: NRestarts and is-active."""

    def __init__(self, restarts: int, active: str = "active"):
        self.restarts, self.active = restarts, active

    def run(self, argv, *, timeout, what):
        script = argv[-1]
        if "NRestarts" in script:
            return 0, f"{self.restarts}\n".encode(), ""
        return 0, f"{self.active}\n".encode(), ""


def test_systemd_restart_count_growing_is_a_crash_loop():
    from edgekit.fleet.services import ServiceKind, healthy

    unit = ServiceKind("systemd", "serve", (), "edgekit-serve.service")
    assert healthy(FakeSystemd(3), unit, baseline=3, settle_s=0) is None
    assert "restarted 2 times" in healthy(FakeSystemd(5), unit, baseline=3, settle_s=0)
    assert "is failed" in healthy(FakeSystemd(3, "failed"), unit, baseline=3, settle_s=0)


@pytest.mark.slow
def test_runner_dying_with_the_shadow_is_the_reason_given(fleet_models, fleet_images, tmp_path, edgekit_home,
                                                          stop_runners):
    fleet = deployed_fleet(tmp_path, fleet_models, fleet_images, local=1)
    code, _ = cli("fleet", "rollout", fleet_models["bigger"], fleet, "--waves", "all", *FAST)
    assert code == 1
    manifest = rollout_manifest(edgekit_home)
    assert "the runner exited" in manifest["reason"] and "differs from the serving model" in manifest["reason"]
    entry = manifest["devices"]["cam-1"]
    assert entry["state"] == "rolled-back" and "differs" in entry["error"]  # put back on its old model
    args = serving_args(tmp_path, "cam-1")
    assert args and "--shadow" not in args


@pytest.mark.slow
def test_unreachable_device_stops_its_wave_and_names_it(sshd, fleet_models, fleet_images, tmp_path, edgekit_home,
                                                        stop_runners):
    fleet = deployed_fleet(tmp_path, fleet_models, fleet_images, local=1)
    data = yaml.safe_load(fleet.read_text())
    down = {**sshd.profile(tmp_path / "pi-down", python=sys.executable), "port": sshd_fixture.free_port()}
    del down["description"]
    data["devices"]["pi-down"] = down  # its ssh port is closed: the device is off the network
    fleet.write_text(yaml.safe_dump(data))
    code, _ = cli("fleet", "rollout", fleet_models["same"], fleet, "--waves", "all", *FAST)
    assert code == 1
    manifest = rollout_manifest(edgekit_home)
    assert manifest["reason"].startswith("wave all: pi-down: ") and "cannot connect" in manifest["reason"]
    assert manifest["devices"]["pi-down"]["state"] == "failed"
    assert manifest["devices"]["cam-1"]["state"] == "rolled-back"
    assert "--shadow" not in serving_args(tmp_path, "cam-1")
