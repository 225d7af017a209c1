"""The fleet file: edgekit and Ansible formats, groups and vars, one-line errors; the parallel executor."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from edgekit.config import validate
from edgekit.errors import EdgekitError
from edgekit.fleet.inventory import load_fleet
from edgekit.fleet.parallel import for_each_device

NATIVE = """
name: plant
devices:
  cam-1: {connection: local, workdir: ./w1}
  cam-2: {connection: local, workdir: ./w2, threads: 3}
  pi-1: {profile: rpi4, host: 10.0.0.9}
groups:
  canary: [cam-1]
  line-2: {devices: [cam-2, pi-1], vars: {threads: 2}}
"""


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_native_fleet_resolves_profiles_groups_and_vars(tmp_path):
    fleet = load_fleet(write(tmp_path, NATIVE))
    assert fleet.name == "plant" and list(fleet.devices) == ["cam-1", "cam-2", "pi-1"]
    cam1, cam2, pi = fleet.devices.values()
    assert cam1.profile.workdir == str(tmp_path / "w1") and cam1.profile.connection == "local"
    assert cam1.profile.name == "cam-1" and cam1.groups == ("canary",)
    assert cam2.profile.threads == 3  # the device's own field beats the group's
    assert pi.profile.threads == 2 and pi.profile.host == "10.0.0.9" and pi.profile.arch == "aarch64"
    assert [d.name for d in fleet.select("line-2")] == ["cam-2", "pi-1"]
    assert [d.name for d in fleet.select()] == [d.name for d in fleet.select("all")] == ["cam-1", "cam-2", "pi-1"]
    assert [d.name for d in fleet.select(names=["pi-1", "cam-1"])] == ["cam-1", "pi-1"]


def test_ansible_inventory_maps_connection_variables(tmp_path):
    path = write(tmp_path, """
all:
  vars: {ansible_user: pi, site: berlin}
  hosts:
    gw: {ansible_host: 10.1.0.1, ansible_port: 2222, ansible_become: true}
  children:
    canary:
      hosts:
        cam-a:
          ansible_host: 10.1.0.2
          ansible_ssh_private_key_file: keys/id
          ansible_python_interpreter: /usr/bin/python3
    line2:
      vars: {threads: 2}
      hosts:
        cam-a:
        cam-b: {ansible_host: 10.1.0.3}
""", "hosts.yml")
    fleet = load_fleet(path)
    assert fleet.name == "hosts" and set(fleet.devices) == {"gw", "cam-a", "cam-b"}
    gw, cam_a = fleet.devices["gw"].profile, fleet.devices["cam-a"].profile
    assert (gw.host, gw.port, gw.user, gw.connection) == ("10.1.0.1", 2222, "pi", "ssh")
    assert cam_a.identity_file == str((tmp_path / "keys/id").resolve()) and cam_a.python == "/usr/bin/python3"
    assert fleet.devices["cam-a"].groups == ("canary", "line2") and cam_a.threads == 2
    assert fleet.devices["gw"].vars["site"] == "berlin"
    assert fleet.groups == {"canary": ("cam-a",), "line2": ("cam-a", "cam-b")}


@pytest.mark.parametrize("text, message", [
    ("devices:\n  a: {connection: local}\n  a: {connection: local}\n", "duplicate key 'a'"),
    ("devices:\n  a: {connection: local}\ngroups:\n  g: [a, b]\n", "group 'g' names unknown device 'b'"),
    ("devices:\n  a: {connection: local}\ngroups:\n  g: [a, a]\n", "lists device 'a' twice"),
    ("devices:\n  a: {profile: no-such-pi}\n", "device 'a': unknown device 'no-such-pi'"),
    ("devices:\n  a: {profile: missing.yaml}\n", "device 'a': "),
    ("devices:\n  a: {connection: local, colour: red}\n", "unknown field 'colour'"),
    ("devices:\n  a: {connection: local, threads: 0}\n", "device 'a'"),
    ("devices:\n  a: {connection: ssh}\n", "missing required field 'host'"),
    ("devices:\n  all: {connection: local}\n", "reserved"),
    ("devices:\n  a: {connection: local}\ngroups:\n  g: [a]\n  h: [a]\nvars:\n  g: {threads: 1}\n  h: {threads: 2}\n",
     "from group 'g'"),
    ("all:\n  hosts:\n    a: {ansible_host: x}\n  children:\n    g:\n      hosts:\n        a: {ansible_host: y}\n",
     "host 'a' is defined twice with different 'host'"),
    ("devices: {}\n", "no devices"),
])
def test_bad_fleet_files_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(EdgekitError) as caught:
        load_fleet(write(tmp_path, text))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(tmp_path / "fleet.yaml") in str(caught.value)


def test_select_unknown_group_or_device_is_one_line(tmp_path):
    fleet = load_fleet(write(tmp_path, NATIVE))
    with pytest.raises(EdgekitError, match="unknown group 'line-9'; groups: all, canary, line-2"):
        fleet.select("line-9")
    with pytest.raises(EdgekitError, match="unknown device 'cam-9'"):
        fleet.select(names=["cam-9"])


def test_for_each_device_isolates_failures_and_limits_concurrency(tmp_path):
    devices = list(load_fleet(write(tmp_path, NATIVE)).devices.values())
    running, peak = [0], [0]

    def work(device):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        running[0] -= 1
        if device.name == "cam-2":
            raise EdgekitError("cam-2: cannot connect\nsecond line")
        if device.name == "pi-1":
            raise KeyError("boom")
        return device.name.upper()

    stream = io.StringIO()
    outcomes = for_each_device(devices, work, parallel=2, label="test", progress=stream)
    assert [o.device for o in outcomes] == ["cam-1", "cam-2", "pi-1"]
    assert outcomes[0].ok and outcomes[0].value == "CAM-1"
    assert not outcomes[1].ok and outcomes[1].error == "cam-2: cannot connect"
    assert outcomes[2].error == "KeyError: 'boom'"
    assert peak[0] <= 2 and len(stream.getvalue().splitlines()) == 3


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("90s", 90), ("1h", 3600), ("2.5", 2.5)])
def test_durations(text, seconds):
    from edgekit.fleet.rollout import parse_duration

    assert parse_duration(text) == seconds


def test_rollout_plan_and_bad_settings_are_one_line(tmp_path):
    from edgekit.fleet.rollout import RolloutSettings, parse_duration, plan_waves

    fleet = load_fleet(write(tmp_path, NATIVE))
    plan = plan_waves(fleet, ("canary", "line-2", "all"))
    assert [(w["name"], w["devices"]) for w in plan] == [("canary", ["cam-1"]), ("line-2", ["cam-2", "pi-1"]),
                                                         ("all", [])]
    assert plan[2]["state"] == "promoted"  # nothing left for the last wave: nothing to do
    assert [w["devices"] for w in plan_waves(fleet, ("all",), group="line-2")] == [["cam-2", "pi-1"]]
    with pytest.raises(EdgekitError, match="unknown group 'line-3'"):
        plan_waves(fleet, ("canary", "line-3"))
    with pytest.raises(EdgekitError, match="--shadow '30 minutes'"):
        parse_duration("30 minutes")
    with pytest.raises(EdgekitError, match="--min-agreement 1.5"):
        validate(RolloutSettings(waves=("all",), shadow_s=1, min_agreement=1.5))


def test_rollout_of_a_device_without_a_deployed_model_names_it(tmp_path, edgekit_home):
    from edgekit.fleet import rollout as rollouts

    model = tmp_path / "m.tflite"
    model.write_bytes(b"not really a model")
    fleet = load_fleet(write(tmp_path, NATIVE.replace("  pi-1: {profile: rpi4, host: 10.0.0.9}\n", "")
                             .replace("[cam-2, pi-1]", "[cam-2]")))
    settings = rollouts.RolloutSettings(waves=("canary", "line-2"), shadow_s=0, min_agreement=0.9)
    rollout = rollouts.start(fleet, model, settings, progress=io.StringIO())
    manifest = rollout.run()
    assert manifest["state"] == "rolled-back"
    assert manifest["reason"].startswith("wave canary: cam-1: no current model")
    saved = json.loads((edgekit_home / "fleet" / "plant" / "rollouts" / manifest["id"] / "manifest.json").read_text())
    assert saved["devices"]["cam-1"]["state"] == "failed" and saved["devices"]["cam-2"]["state"] == "pending"
    from edgekit.fleet.rollout_manifest import device_waves

    waves = device_waves(fleet)
    assert waves["cam-1"]["wave"] == "canary" and waves["cam-1"]["device_state"] == "failed"
    assert waves["cam-2"]["device_state"] == "pending" and waves["cam-2"]["rollout"] == manifest["id"]


def test_resume_of_an_interrupted_rollback_finishes_it(tmp_path, edgekit_home):
    from edgekit.fleet import rollout as rollouts

    model = tmp_path / "m.tflite"
    model.write_bytes(b"candidate")
    fleet = load_fleet(write(tmp_path, NATIVE))
    settings = rollouts.RolloutSettings(waves=("line-2",), shadow_s=0, min_agreement=0.9)
    rollout = rollouts.start(fleet, model, settings, progress=io.StringIO())
    rollout.set_device("cam-2", state="rolled-back")  # the host died after rolling back one of two devices
    resumed = rollouts.resume(fleet, model, progress=io.StringIO())
    manifest = resumed.run()
    assert manifest["state"] == "rolled-back" and "rollback was interrupted" in manifest["reason"]
    assert {manifest["devices"][n]["state"] for n in ("cam-2", "pi-1")} == {"rolled-back"}
