"""Device profiles: one YAML file per target saying how to reach it and how to run models on it.

Shipped profiles live in the package (`devices/` at the top of the repository); a user's own profiles in
`$EDGEKIT_HOME/devices/*.yaml` override shipped ones of the same name, so a user points `rpi4` at their
own Pi without editing the package. A profile is checked field by field when it is read, because a typo
found on the device, after a model was copied over SSH, costs far more than one found here.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from edgekit import runner
from edgekit.artifacts import edgekit_home
from edgekit.config import LATENCY_MS, THREADS, Check, OneOf, Rule, from_mapping
from edgekit.errors import EdgekitError
from edgekit.yamlio import load_yaml_file

SHIPPED_DIR = Path(__file__).resolve().parent / "resources" / "devices"
RUNNER_NAME = "edgekit_runner.py"

Arch = Literal["x86_64", "aarch64", "armv7l", "any"]
Connection = Literal["local", "ssh"]
Runtime = Literal["auto", "litert", "tflite_runtime", "tf.lite"]
Delegate = Literal["none", "edgetpu"]
ARCHES, CONNECTIONS, RUNTIMES, DELEGATES = (typing.get_args(t) for t in (Arch, Connection, Runtime, Delegate))
# Options edgekit sets itself: letting a profile turn host-key checking off would defeat its purpose.
RESERVED_SSH_OPTIONS = ("batchmode", "stricthostkeychecking")
DEFAULT_SSH_WORKDIR = "~/edgekit"


@dataclass(frozen=True)
class DeviceProfile:
    """Where a benchmark or deployment runs and with what: read from one YAML file."""

    name: str
    description: str
    arch: str
    connection: str
    host: str | None = None
    user: str | None = None
    port: int | None = None  # None: whatever ~/.ssh/config says, else 22
    identity_file: str | None = None
    known_hosts_file: str | None = None
    ssh_options: tuple[tuple[str, str], ...] = ()
    python: str | None = None  # None: python3 over SSH, the interpreter running edgekit locally
    venv: str | None = None  # a venv on the device that deploy/doctor create from `python` and run the runner in
    runtime: str = "auto"
    delegate: str = "none"
    threads: int = 4
    workdir: str | None = None  # None: ~/edgekit over SSH, $EDGEKIT_HOME/targets/<name> locally
    aliases: tuple[str, ...] = ()
    reference_latency_ms: dict = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False)

    @property
    def is_remote(self) -> bool:
        return self.connection == "ssh"

    @property
    def address(self) -> str:
        """host:port as a user would type it, for messages."""
        if not self.is_remote:
            return "localhost"
        return f"{self.host}:{self.port or 22}"

    @property
    def base_python(self) -> str:
        """The Python that creates `venv`, or runs the runner when there is none."""
        if self.python:
            return self.python
        return "python3" if self.is_remote else sys.executable

    @property
    def interpreter(self) -> str:
        if self.venv:  # PEP 668 (Debian 12, Raspberry Pi OS bookworm): pip installs only into a venv
            python = posixpath.join(self.venv, "bin", "python")
            return python if self.is_remote else os.path.expanduser(python)
        return self.base_python

    @property
    def remote_workdir(self) -> str:
        if self.workdir:
            return self.workdir
        if self.is_remote:
            return DEFAULT_SSH_WORKDIR
        return str(edgekit_home() / "targets" / self.name)


def _nonempty(value: str) -> bool:
    return value.strip() != ""


def _text(description: str):
    return Check(description, _nonempty).field(None)


PORT = Check("an integer port between 1 and 65535", lambda v: isinstance(v, int) and 0 < v < 65536)
_SSH_ONLY = ("host", "user", "port", "identity_file", "known_hosts_file", "ssh_options")


@dataclass(frozen=True, kw_only=True)
class ProfileFile:
    """The fields a device profile YAML may have: the schema `config.from_mapping` checks it against,
    with what no single field can say in RULES: ssh needs a host, local takes no ssh fields, host keys
    stay checked."""

    name: str | None = _text("a non-empty string")
    description: str = Check("a non-empty string", _nonempty).field()
    arch: str = OneOf(ARCHES).field()
    connection: str = OneOf(CONNECTIONS).field()
    host: str | None = _text("a host name or address")
    user: str | None = _text("a user name")
    port: int | None = PORT.field(None)
    identity_file: str | None = _text("a path to a private key")
    known_hosts_file: str | None = _text("a path to a known_hosts file")
    ssh_options: dict[str, str | bool | int | float] | None = Check(
        "a mapping of ssh option names to values, e.g. {Compression: 'yes'}",
        lambda v: all(_nonempty(k) for k in v)).field(None)
    python: str | None = _text("the Python interpreter to run on the device, e.g. python3")
    venv: str | None = _text("a virtual environment folder on the device, e.g. ~/edgekit/venv")
    runtime: str = OneOf(RUNTIMES).field("auto")
    delegate: str = OneOf(DELEGATES).field("none")
    threads: int = THREADS.field(4)
    workdir: str | None = _text("a directory on the device, e.g. ~/edgekit")
    aliases: tuple[str, ...] | None = Check(
        "a list of names, e.g. [pi]", lambda v: all(isinstance(a, str) and _nonempty(a) for a in v)).field(None)
    reference_latency_ms: dict[str, float] | None = Check(
        "a mapping of variant name to milliseconds", lambda v: all(ms in LATENCY_MS for ms in v.values())).field(None)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda f: f.connection != "ssh" or f.host is not None,
             "missing required {host} (needed for connection: ssh)"),
        *(Rule(lambda f, key=key: f.connection != "local" or getattr(f, key) is None,
               f"{{{key}}} only applies to connection: ssh") for key in _SSH_ONLY),
        Rule(lambda f: f.reserved_ssh_option is None,
             "{ssh_options} must not set {v.reserved_ssh_option}; edgekit always checks host keys "
             "(use --accept-new-host-key to trust a device on first contact)"),
    )

    @property
    def reserved_ssh_option(self) -> str | None:
        """An ssh option edgekit sets itself (host-key checking) that this profile tries to set."""
        return next((k for k in self.ssh_options or {} if k.lower() in RESERVED_SSH_OPTIONS), None)


def _read_yaml(path: Path) -> dict:
    data = load_yaml_file(path, "device profile")
    if not isinstance(data, dict):
        raise EdgekitError(f"{path}: a device profile must be a YAML mapping of fields, e.g. `arch: aarch64`")
    return data


def _option_value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _local_path(path: Path, value: str | None) -> str | None:
    """Key files named relative to the profile resolve against its folder, like includes in ssh_config."""
    if value is None or value.startswith("~") or Path(value).is_absolute():
        return value
    return str((path.parent / value).resolve())


def parse_profile(path: Path, data: dict, where: str | None = None) -> DeviceProfile:
    """Check a profile's fields and build it; every problem is one line naming the file and field."""
    path = Path(path)
    where = where or str(path)
    checked = from_mapping(ProfileFile, data, where)
    values = {f.name: getattr(checked, f.name) for f in dataclasses.fields(ProfileFile)
              if getattr(checked, f.name) is not None}
    values.setdefault("name", path.stem)
    values["aliases"] = tuple(values.get("aliases", ()))
    values["ssh_options"] = tuple((k, _option_value(v)) for k, v in values.get("ssh_options", {}).items())
    values["reference_latency_ms"] = {k: float(v) for k, v in values.get("reference_latency_ms", {}).items()}
    for key in ("identity_file", "known_hosts_file"):
        values[key] = _local_path(path, values.get(key))
    return DeviceProfile(**values, source=str(path))


def read_profile(path: Path) -> DeviceProfile:
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: no such device profile file")
    return parse_profile(path, _read_yaml(path))


def user_devices_dir() -> Path:
    return edgekit_home() / "devices"


def _profile_dirs() -> list[Path]:
    """Shipped first, then the user's; inside the repository the two can be the same folder."""
    dirs = [SHIPPED_DIR]
    user_dir = user_devices_dir()
    if user_dir.is_dir() and user_dir.resolve() != SHIPPED_DIR:
        dirs.append(user_dir)
    return dirs


def _profiles_by_name() -> dict[str, DeviceProfile]:
    found: dict[str, DeviceProfile] = {}
    for directory in _profile_dirs():
        in_this_dir: dict[str, DeviceProfile] = {}
        for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
            profile = read_profile(path)
            if profile.name in in_this_dir:
                raise EdgekitError(
                    f"{path}: device name {profile.name!r} is also used by {in_this_dir[profile.name].source}; "
                    "rename one of them"
                )
            in_this_dir[profile.name] = profile
        found.update(in_this_dir)  # a user profile replaces the shipped one of the same name
    return found


def list_profiles() -> list[DeviceProfile]:
    """Every known device, user profiles overriding shipped ones, sorted by name."""
    return sorted(_profiles_by_name().values(), key=lambda profile: profile.name)


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or "\\" in name_or_path


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A device by name (`rpi4`), alias (`pi`) or path to a YAML file (`./my-pi.yaml`)."""
    if isinstance(name_or_path, Path) or _looks_like_path(str(name_or_path)):
        return read_profile(Path(name_or_path).expanduser())
    profiles = _profiles_by_name()
    if name_or_path in profiles:
        return profiles[name_or_path]
    matches = [p for p in profiles.values() if name_or_path in p.aliases]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        files = " and ".join(p.source for p in matches)
        raise EdgekitError(f"device alias {name_or_path!r} is claimed by {files}; remove it from one of them")
    known = ", ".join(
        p.name + (f" ({', '.join(p.aliases)})" if p.aliases else "") for p in sorted(
            profiles.values(), key=lambda p: p.name)
    )
    raise EdgekitError(
        f"unknown device {name_or_path!r}; known devices: {known}. "
        f"Add your own as {user_devices_dir() / (str(name_or_path) + '.yaml')} or pass a path to a .yaml file"
    )


def with_overrides(profile: DeviceProfile, **changes) -> DeviceProfile:
    """The profile with command-line overrides (e.g. `host=`, `threads=`), checked like YAML fields."""
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        return profile
    data = {f.name: getattr(profile, f.name) for f in dataclasses.fields(ProfileFile)}
    data["aliases"] = list(profile.aliases)
    data["ssh_options"] = dict(profile.ssh_options) or None
    data = {key: value for key, value in data.items() if value is not None}
    data.update(changes)
    where = f"{profile.source or profile.name} with overrides {', '.join(sorted(changes))}"
    return parse_profile(Path(profile.source or "."), data, where=where)


def runner_path() -> Path:
    """The standalone on-device runner, copied next to every deployed model."""
    path = SHIPPED_DIR / RUNNER_NAME
    if not path.is_file():
        raise EdgekitError(f"{path}: the on-device runner is missing from the installation; reinstall edgekit")
    return path


def runner_module():
    """The runner file imported as a module (`edgekit.runner` loads it once), for code that must behave
    exactly as the device does (its decode, its option parser)."""

    return runner.module
