"""Fleet operations over several devices: ls, deploy, doctor, bench; SSH connection sharing."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import sshd_fixture  # noqa: E402

from edgekit.cli import app  # noqa: E402
from edgekit.device_state import read_current  # noqa: E402
from edgekit.transport.ssh import SshClient  # noqa: E402
from edgekit.transport.targets import make_target  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from sshd_fixture.serve(tmp_path_factory)


def sshd_log(sshd) -> Path:
    return Path(sshd.identity_file).parent / "sshd.log"


def fleet_file(tmp_path: Path, sshd, extra: dict | None = None) -> Path:
    devices = {"cam-1": {"connection": "local", "workdir": "./cam-1"},
               "cam-2": {"connection": "local", "workdir": "./cam-2"}}
    for n in (1, 2):
        profile = sshd.profile(tmp_path / f"pi-{n}", python=sys.executable)
        del profile["description"]
        devices[f"pi-{n}"] = profile
    devices.update(extra or {})
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"name": "ops", "devices": devices,
                                    "groups": {"canary": ["cam-1"], "remote": ["pi-1", "pi-2"]}}))
    return path


def test_fleet_ls_lists_devices_and_groups(tmp_path, sshd):
    path = fleet_file(tmp_path, sshd)
    result = runner.invoke(app, ["fleet", "ls", str(path), "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert [d["device"] for d in listing["devices"]] == ["cam-1", "cam-2", "pi-1", "pi-2"]
    assert listing["groups"]["remote"] == ["pi-1", "pi-2"]
    assert listing["devices"][2]["address"] == f"{sshd.host}:{sshd.port}"
    text = runner.invoke(app, ["fleet", "ls", str(path), "--group", "remote"])
    assert text.exit_code == 0 and "pi-1" in text.stdout and "cam-1" not in text.stdout
    assert max(len(line) for line in text.stdout.splitlines()) <= 100
    bad = runner.invoke(app, ["fleet", "ls", str(path), "--group", "nope"])
    assert bad.exit_code == 1 and "unknown group 'nope'" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_fleet_deploy_and_doctor_reach_every_device_and_one_failure_stops_none(tmp_path, sshd, fleet_models,
                                                                              edgekit_home):
    broken = {"pi-down": {**sshd.profile(tmp_path / "down", python=sys.executable), "port": sshd_fixture.free_port()}}
    del broken["pi-down"]["description"]
    path = fleet_file(tmp_path, sshd, broken)
    result = runner.invoke(app, ["fleet", "deploy", str(fleet_models["base"].parent), str(path), "--parallel", "3"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines[:-1]) <= 100 and lines[-2] == "4 ok, 1 failed"  # last: record path
    assert "pi-down" in result.stdout and "cannot connect" in result.stdout
    assert result.stderr.count("deploy ") == 5  # one progress line per device
    sha = fleet_models["base"].parent.joinpath("model.tflite").read_bytes()
    import hashlib

    for device in ("cam-1", "cam-2", "pi-1", "pi-2"):
        state = json.loads((tmp_path / device / "current.json").read_text())
        assert state["model_sha256"] == hashlib.sha256(sha).hexdigest() and state["variant"] == "base"
    [record] = list((edgekit_home / "fleet" / "ops" / "deploy").glob("*/manifest.json"))
    saved = json.loads(record.read_text())
    assert saved["devices"]["pi-down"]["ok"] is False and saved["devices"]["pi-1"]["ok"] is True
    doctor = runner.invoke(app, ["fleet", "doctor", str(path), "--group", "remote", "--json"])
    assert doctor.exit_code == 0, doctor.output
    assert [d["ok"] for d in json.loads(doctor.stdout)["devices"]] == [True, True]


@pytest.mark.slow
def test_fleet_bench_times_the_model_on_every_device(tmp_path, sshd, fleet_models):
    path = fleet_file(tmp_path, sshd)
    result = runner.invoke(app, ["fleet", "bench", str(fleet_models["base"]), str(path), "--group", "canary",
                                 "--runs", "5", "--min-seconds", "0", "--json"])
    assert result.exit_code == 0, result.output
    [device] = json.loads(result.stdout)["devices"]
    assert device["device"] == "cam-1" and device["result"]["rows"][0]["latency_ms"]["p50"] > 0


def test_redeploy_keeps_the_replaced_model_as_previous(tmp_path, fleet_models):
    from edgekit.deploy import deploy
    from edgekit.devices import parse_profile

    profile = parse_profile(tmp_path / "d.yaml", {"description": "d", "arch": "any", "connection": "local",
                                                  "workdir": str(tmp_path / "dev")})
    first = deploy(profile, fleet_models["base"])
    deploy(profile, fleet_models["other"])
    state = read_current(make_target(profile))
    assert state.variant == "other" and state.previous.model_sha256 == first["model_sha256"]
    deploy(profile, fleet_models["other"])  # deploying the same model again keeps the rollback target
    assert read_current(make_target(profile)).previous.model_sha256 == first["model_sha256"]


def test_repeated_ssh_steps_share_one_connection(tmp_path, sshd):
    known_hosts = tmp_path / "known_hosts"  # a fresh file: a fresh master, whatever ran before
    shutil.copyfile(sshd.known_hosts_file, known_hosts)
    client = SshClient(sshd.host, sshd.port, sshd.user, sshd.identity_file, str(known_hosts))
    log = sshd_log(sshd)
    before = log.read_text().count("Accepted publickey")
    for n in range(5):
        assert client.run(f"echo {n}", timeout=30).stdout.strip() == str(n).encode()
    source = tmp_path / "f.bin"
    source.write_bytes(b"x" * 1000)
    client.put(source, str(tmp_path / "copied.bin"))
    assert log.read_text().count("Accepted publickey") - before == 1
    socket_dir = Path(client._sharing_options()[3].split("=", 1)[1]).parent
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    unshared = SshClient(sshd.host, sshd.port, sshd.user, sshd.identity_file, str(known_hosts),
                         options=(("ControlMaster", "no"),))
    before = log.read_text().count("Accepted publickey")
    unshared.run("true", timeout=30)
    unshared.run("true", timeout=30)
    assert log.read_text().count("Accepted publickey") - before == 2  # a profile can turn sharing off


def test_ansible_inventory_through_fleet_ls(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  children:\n    canary:\n      hosts:\n"
                    "        pi-a: {ansible_host: 10.0.0.5, ansible_user: pi}\n")
    result = runner.invoke(app, ["fleet", "ls", str(path), "--json"])
    assert result.exit_code == 0, result.output
    [device] = json.loads(result.stdout)["devices"]
    assert (device["device"], device["address"], device["user"], device["groups"]) == ("pi-a", "10.0.0.5:22", "pi",
                                                                                     ["canary"])


@pytest.mark.parametrize("args, message", [
    (["--resume", "--abort", "--waves", "all"], None),
    (["--abort"], "--abort rolls back an interrupted rollout; use it with --resume"),
    (["--waves", "canary,line-9"], "unknown group 'line-9'"),
    (["--shadow", "soon"], "--shadow 'soon'"),
])
def test_rollout_option_mistakes_are_one_line(tmp_path, args, message):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"x")
    path = tmp_path / "fleet.yaml"
    path.write_text("devices:\n  cam-1: {connection: local}\ngroups:\n  canary: [cam-1]\n")
    result = runner.invoke(app, ["fleet", "rollout", str(model), str(path), *args])
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and (message or "no unfinished rollout") in last


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="this machine runs systemd")
def test_fleet_deploy_service_on_devices_without_systemd_fails_each_in_one_line(tmp_path, sshd, fleet_models):
    path = fleet_file(tmp_path, sshd)
    bad = runner.invoke(app, ["fleet", "deploy", str(fleet_models["base"]), str(path), "--service-args", "x"])
    assert bad.exit_code == 1 and "--service-args needs --service" in bad.output
    result = runner.invoke(app, ["fleet", "deploy", str(fleet_models["base"]), str(path), "--group", "canary",
                                 "--service", "serve", "--json"])
    assert result.exit_code == 1
    [device] = json.loads(result.stdout)["devices"]
    assert not device["ok"] and "does not run systemd" in device["error"] and "\n" not in device["error"]
