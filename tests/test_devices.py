"""Device profiles: shipped ones load, user ones override, and every mistake is one line naming the field."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from edgekit.devices import (
    SHIPPED_DIR,
    DeviceProfile,
    list_profiles,
    load_profile,
    read_profile,
    with_overrides,
)
from edgekit.errors import EdgekitError

SHIPPED = {"desktop", "rpi4", "rpi5", "coral-usb", "coral-devboard"}
GOOD = {"description": "a test Pi", "arch": "aarch64", "connection": "ssh", "host": "pi.lan", "threads": 2}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    (tmp_path / "devices").mkdir()
    return tmp_path


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_line(path_or_name) -> str:
    with pytest.raises(EdgekitError) as error:
        load_profile(path_or_name)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", sorted(SHIPPED_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_loads_and_is_named_after_its_file(path):
    profile = read_profile(path)
    assert isinstance(profile, DeviceProfile)
    assert profile.name == path.stem
    assert profile.threads >= 1
    assert not profile.is_remote or profile.host


def test_shipped_profiles_are_the_documented_set(home):
    assert {profile.name for profile in list_profiles()} == SHIPPED


@pytest.mark.parametrize("alias, name", [("pi", "rpi4"), ("coral", "coral-usb"), ("rpi5", "rpi5")])
def test_aliases_and_names_find_the_profile(home, alias, name):
    assert load_profile(alias).name == name


def test_shipped_remote_profiles_use_ssh_defaults(home):
    pi = load_profile("rpi4")
    assert (pi.connection, pi.arch, pi.base_python, pi.remote_workdir) == ("ssh", "aarch64", "python3", "~/edgekit")
    assert pi.interpreter == "~/edgekit/venv/bin/python"  # bookworm's system Python refuses pip (PEP 668)
    assert pi.port is None and pi.address == "raspberrypi.local:22"
    assert load_profile("coral-devboard").delegate == "edgetpu"


def test_local_profile_runs_with_edgekits_own_python_under_edgekit_home(home):
    desktop = load_profile("desktop")
    assert desktop.interpreter == sys.executable
    assert desktop.remote_workdir == str(home / "targets" / "desktop")


def test_unknown_name_lists_the_known_devices(home):
    message = error_line("rpi3")
    assert message.startswith("unknown device 'rpi3'; known devices: coral-devboard (devboard), coral-usb (coral)")
    assert "rpi4 (pi)" in message and str(home / "devices" / "rpi3.yaml") in message


def test_user_profile_overrides_the_shipped_one(home):
    write(home / "devices" / "rpi4.yaml", {**GOOD, "host": "garage-pi", "user": "me", "aliases": ["pi"]})
    profile = load_profile("pi")
    assert (profile.host, profile.user, profile.threads) == ("garage-pi", "me", 2)
    assert profile.source == str(home / "devices" / "rpi4.yaml")
    assert len([p for p in list_profiles() if p.name == "rpi4"]) == 1


def test_user_profile_adds_a_new_device(home):
    write(home / "devices" / "lab.yaml", {**GOOD, "port": 2222, "identity_file": "keys/lab"})
    profile = load_profile("lab")
    assert profile.address == "pi.lan:2222"
    assert profile.identity_file == str(home / "devices" / "keys" / "lab")
    assert "lab" in {p.name for p in list_profiles()}


def test_profile_by_path(tmp_path, home):
    path = write(tmp_path / "bench-box.yaml", {**GOOD, "name": "box"})
    assert load_profile(str(path)).name == "box"
    assert error_line(str(tmp_path / "absent.yaml")) == f"{tmp_path / 'absent.yaml'}: no such device profile file"


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"thread": 4}, "unknown field 'thread'; known fields: name, description"),
        ({"arch": None}, "missing required field 'arch'"),
        ({"host": None}, "missing required field 'host' (needed for connection: ssh)"),
        ({"threads": "four"}, "field 'threads' must be a whole number of threads from 1 to 256, got 'four'"),
        ({"threads": True}, "field 'threads' must be a whole number of threads from 1 to 256, got True"),
        ({"port": 70000}, "field 'port' must be an integer port between 1 and 65535, got 70000"),
        ({"arch": "arm64"}, "field 'arch' must be one of x86_64, aarch64, armv7l, any, got 'arm64'"),
        ({"delegate": "gpu"}, "field 'delegate' must be one of none, edgetpu, got 'gpu'"),
        ({"aliases": "pi"}, "field 'aliases' must be a list of names, e.g. [pi], got 'pi'"),
        ({"reference_latency_ms": {"v": -1}}, "field 'reference_latency_ms' must be a mapping"),
        ({"ssh_options": {"StrictHostKeyChecking": "no"}}, "field 'ssh_options' must not set StrictHostKeyChecking"),
        ({"connection": "local", "host": "pi.lan"}, "field 'host' only applies to connection: ssh"),
    ],
)
def test_bad_field_is_one_line_naming_file_and_field(tmp_path, home, change, expected):
    data = {key: value for key, value in {**GOOD, **change}.items() if value is not None}
    path = write(tmp_path / "bad.yaml", data)
    assert error_line(str(path)).startswith(f"{path}: {expected}")


def test_a_broken_user_profile_is_reported_when_listing(home):
    path = write(home / "devices" / "typo.yaml", {**GOOD, "hots": "x"})
    with pytest.raises(EdgekitError, match=f"^{path}: unknown field 'hots'"):
        list_profiles()


@pytest.mark.parametrize("text, expected", [("arch: [x86_64\n", "not valid YAML at line 2"),
                                            ("- a list\n", "a device profile must be a YAML mapping")])
def test_malformed_yaml_names_the_file(tmp_path, home, text, expected):
    path = write(tmp_path / "broken.yaml", text)
    assert error_line(str(path)).startswith(f"{path}: {expected}")


def test_duplicate_alias_is_reported_only_when_used(home):
    write(home / "devices" / "mine.yaml", {**GOOD, "aliases": ["pi"]})
    assert load_profile("mine").name == "mine"
    message = error_line("pi")
    assert "device alias 'pi' is claimed by" in message and "rpi4.yaml" in message


def test_overrides_are_checked_like_yaml_fields(home):
    pi = with_overrides(load_profile("rpi4"), host="10.0.0.7", port=2200, user=None)
    assert (pi.address, pi.user) == ("10.0.0.7:2200", "pi")
    with pytest.raises(EdgekitError, match=r"rpi4.yaml with overrides threads: field 'threads' must be"):
        with_overrides(pi, threads=0)
    assert with_overrides(load_profile("desktop"), threads=2).threads == 2
