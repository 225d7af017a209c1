"""A fleet file: named devices (each a device profile, by name or inline fields) and groups of them.

Two formats are read, told apart by their top level:

edgekit's own (`devices:` at the top)::

    name: plant-a                  # optional; default: the file name without .yaml
    devices:
      cam-1: {profile: rpi4, host: 10.0.0.11}         # a profile by name or path (relative to this file)
      cam-2: {host: 10.0.0.12, user: pi, arch: aarch64}  # inline fields (connection: ssh when host is set)
      bench: {connection: local, workdir: ./bench, service: "live incoming --existing"}
    groups:
      canary: [cam-1]
      line-2: {devices: [cam-2, bench], vars: {threads: 2}}
    vars:                          # per-group variables, also accepted here
      canary: {venv: ~/edgekit/venv}

A relative `workdir` of a local device resolves against the fleet file's folder. `service:` (runner
arguments after the model: `serve --port 8080` or `live SOURCE ...`) is how `fleet rollout` restarts a
device that has no systemd unit from `deploy --service` (see edgekit.fleet.services).

An Ansible YAML inventory (`all:` at the top: `hosts:`, `children:`, `vars:` at any level), so a team
keeps one list of its machines. `ansible_host/user/port/ssh_private_key_file/python_interpreter/connection`
map to profile fields; `edgekit_profile` names a profile; other `ansible_*` keys are ignored and any other
variable is kept in `FleetDevice.vars` (Ansible inventories carry application variables edgekit cannot know).

Every device becomes a `DeviceProfile` through `devices.parse_profile`/`with_overrides`, so a fleet
device is checked exactly as a profile file is. Precedence: the named profile, then group vars (groups
in file order; two groups giving one field different values is an error, since there is no order a user
would guess), then the device's own fields. `all` is every device and cannot be defined.

Duplicates: a device key defined twice is refused by the YAML loader (duplicate key). In an Ansible
inventory the same host under several groups is membership, not a duplicate; it is refused only when
two places give it different values for the same variable. A name listed twice in one group is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.config import Check
from edgekit.devices import DeviceProfile, ProfileFile, load_profile, parse_profile, with_overrides
from edgekit.errors import EdgekitError
from edgekit.yamlio import load_yaml_file

ALL = "all"
PROFILE_FIELDS = frozenset(f.name for f in dataclasses.fields(ProfileFile))
_ANSIBLE_FIELDS = {
    "ansible_host": "host", "ansible_user": "user", "ansible_port": "port",
    "ansible_ssh_private_key_file": "identity_file", "ansible_python_interpreter": "python",
    "ansible_connection": "connection", "edgekit_profile": "profile",
}
FLEET_FIELDS = frozenset({"service"})  # fleet-only device settings, kept in FleetDevice.vars
_DEVICE_KEYS = PROFILE_FIELDS | FLEET_FIELDS | {"profile"}
# The fleet's, each device's and each group's name: one rule, one set of words.
PLAIN_NAME = Check("a plain non-empty name (no '/', not starting with '.'), e.g. plant-a",
                   lambda n: isinstance(n, str) and n.strip() != "" and "/" not in n and not n.startswith("."))
PROFILE_REF = Check("a profile name or a path to a .yaml file", lambda r: isinstance(r, str) and r.strip() != "")


@dataclass(frozen=True)
class FleetDevice:
    """One device of a fleet: its name, its resolved profile, the groups it is in, and the variables
    the fleet file set on it (profile fields applied, plus any other Ansible variables)."""

    name: str
    profile: DeviceProfile
    groups: tuple[str, ...]
    vars: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Fleet:
    name: str
    source: Path
    devices: dict[str, FleetDevice]
    groups: dict[str, tuple[str, ...]]

    def select(self, group: str | None = None, names: list[str] | None = None) -> list[FleetDevice]:
        """The devices of `group` (None or `all`: every device), narrowed to `names`, in inventory order."""
        if group in (None, ALL):
            chosen = list(self.devices)
        elif group in self.groups:
            chosen = list(self.groups[group])
        else:
            known = ", ".join([ALL, *self.groups])
            raise EdgekitError(f"{self.source}: unknown group {group!r}; groups: {known}")
        if names:
            unknown = [n for n in names if n not in self.devices]
            if unknown:
                raise EdgekitError(f"{self.source}: unknown device {unknown[0]!r}; devices: {', '.join(self.devices)}")
            outside = [n for n in names if n not in chosen]
            if outside:
                raise EdgekitError(f"{self.source}: device {outside[0]!r} is not in group {group!r}")
            chosen = [n for n in chosen if n in names]
        return [self.devices[n] for n in self.devices if n in chosen]


def load_fleet(path: Path) -> Fleet:
    """Read and check a fleet file (edgekit or Ansible format); any problem is one line naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EdgekitError(f"{path}: no such fleet file")
    data = load_yaml_file(path, "fleet file")
    if not isinstance(data, dict):
        raise EdgekitError(f"{path}: a fleet file must be a mapping with `devices:` (or an Ansible `all:`)")
    if "all" in data and "devices" not in data:
        name, specs, groups, group_vars = _read_ansible(path, data)
    else:
        name, specs, groups, group_vars = _read_native(path, data)
    if not specs:
        raise EdgekitError(f"{path}: the fleet has no devices; add some under `devices:`")
    member_of = {n: tuple(g for g, members in groups.items() if n in members) for n in specs}
    devices = {}
    for device_name, spec in specs.items():
        devices[device_name] = _build_device(path, device_name, spec, member_of[device_name], group_vars)
    return Fleet(name=name, source=path, devices=devices, groups={g: tuple(m) for g, m in groups.items()})


def _mapping(path: Path, value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EdgekitError(f"{path}: {what} must be a mapping, got {type(value).__name__}")
    return value


def _read_native(path: Path, data: dict):
    unknown = set(data) - {"name", "devices", "groups", "vars"}
    if unknown:
        raise EdgekitError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}; expected name, devices, groups, "
                           "vars")
    name = data.get("name", path.stem)
    if name not in PLAIN_NAME:
        raise EdgekitError(f"{path}: field 'name' must be {PLAIN_NAME.text}, got {name!r}")
    specs = {}
    for device_name, spec in _mapping(path, data.get("devices"), "'devices'").items():
        _check_name(path, device_name, "device")
        spec = _mapping(path, spec, f"device {device_name!r}")
        bad = set(spec) - _DEVICE_KEYS
        if bad:
            raise EdgekitError(f"{path}: device {device_name!r}: unknown field {sorted(bad)[0]!r}; use profile or "
                               "device profile fields (host, user, port, connection, workdir, ...)")
        specs[device_name] = dict(spec)
    groups: dict[str, list[str]] = {}
    group_vars: dict[str, dict] = {}
    for group, members in _mapping(path, data.get("groups"), "'groups'").items():
        _check_name(path, group, "group")
        if isinstance(members, dict):
            bad = set(members) - {"devices", "vars"}
            if bad:
                raise EdgekitError(f"{path}: group {group!r}: unknown field {sorted(bad)[0]!r}; use devices, vars")
            group_vars[group] = _mapping(path, members.get("vars"), f"group {group!r} vars")
            members = members.get("devices") or []
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise EdgekitError(f"{path}: group {group!r} must be a list of device names, e.g. [cam-1, cam-2]")
        for member in members:
            if member not in specs:
                raise EdgekitError(f"{path}: group {group!r} names unknown device {member!r}; define it under "
                                   "`devices:`")
            if members.count(member) > 1:
                raise EdgekitError(f"{path}: group {group!r} lists device {member!r} twice")
        groups[group] = list(members)
    for group, values in _mapping(path, data.get("vars"), "'vars'").items():
        if group not in groups:
            raise EdgekitError(f"{path}: vars for unknown group {group!r}; groups: {', '.join(groups) or 'none'}")
        if group in group_vars:
            raise EdgekitError(f"{path}: group {group!r} has vars both under groups: and vars:; keep one")
        group_vars[group] = _mapping(path, values, f"vars of group {group!r}")
    for group, values in group_vars.items():
        bad = set(values) - PROFILE_FIELDS - FLEET_FIELDS
        if bad:
            raise EdgekitError(f"{path}: vars of group {group!r}: unknown field {sorted(bad)[0]!r}; group vars are "
                               "device profile fields")
    return name, specs, groups, group_vars


def _check_name(path: Path, name, what: str) -> None:
    if name == ALL or name not in PLAIN_NAME:
        reason = "is reserved for every device" if name == ALL else f"must be {PLAIN_NAME.text}"
        raise EdgekitError(f"{path}: {what} name {name!r} {reason}; rename it")


def _ansible_vars(path: Path, values, where: str) -> dict:
    out = {}
    for key, value in _mapping(path, values, where).items():
        if key in _ANSIBLE_FIELDS:
            out[_ANSIBLE_FIELDS[key]] = value
        elif isinstance(key, str) and key.startswith("ansible_"):
            continue  # become, ssh args, ...: Ansible's business, not a device profile's
        else:
            out[key] = value
    if out.get("connection") not in (None, "local", "ssh"):
        out["connection"] = "ssh"  # paramiko/smart: edgekit speaks OpenSSH
    return out


def _read_ansible(path: Path, data: dict):
    unknown = set(data) - {"all"}
    if unknown:
        raise EdgekitError(f"{path}: an Ansible inventory has one top-level key `all:`; move "
                           f"{sorted(unknown)[0]!r} under all.children")
    specs: dict[str, dict] = {}
    where_set: dict[tuple[str, str], str] = {}
    groups: dict[str, list[str]] = {}
    group_vars: dict[str, dict] = {}

    def walk(group: str, node, trail: str) -> list[str]:
        node = _mapping(path, node, trail)
        bad = set(node) - {"hosts", "children", "vars"}
        if bad:
            raise EdgekitError(f"{path}: {trail}: unknown key {sorted(bad)[0]!r}; expected hosts, children, vars")
        members: list[str] = []
        for host, values in _mapping(path, node.get("hosts"), f"{trail}.hosts").items():
            _check_name(path, host, "host")
            spec = specs.setdefault(host, {})
            for key, value in _ansible_vars(path, values, f"{trail}.hosts.{host}").items():
                if key in spec and spec[key] != value:
                    raise EdgekitError(f"{path}: host {host!r} is defined twice with different {key!r} "
                                       f"({where_set[host, key]} and {trail}); keep one definition")
                spec[key] = value
                where_set[host, key] = trail
            members.append(host)
        for child, sub in _mapping(path, node.get("children"), f"{trail}.children").items():
            _check_name(path, child, "group")
            members += walk(child, sub, f"{trail}.children.{child}")
        if group != ALL:
            previous = groups.get(group, [])
            groups[group] = previous + [m for m in members if m not in previous]
            values = _ansible_vars(path, node.get("vars"), f"{trail}.vars")
            if values:
                group_vars.setdefault(group, {}).update(values)
        elif node.get("vars"):
            group_vars[ALL] = _ansible_vars(path, node.get("vars"), f"{trail}.vars")
        return members

    walk(ALL, data["all"], "all")
    return path.stem, specs, {g: list(dict.fromkeys(m)) for g, m in groups.items()}, group_vars


def _merged_group_vars(path: Path, name: str, groups: tuple[str, ...], group_vars: dict) -> dict:
    merged: dict = dict(group_vars.get(ALL, {}))
    origin: dict = {}
    for group in groups:
        for key, value in group_vars.get(group, {}).items():
            if key in origin and merged[key] != value:
                raise EdgekitError(f"{path}: device {name!r} gets {key!r} from group {origin[key]!r} ({merged[key]!r}) "
                                   f"and group {group!r} ({value!r}); set it on the device itself")
            merged[key] = value
            origin[key] = group
    return merged


def _build_device(path: Path, name: str, spec: dict, groups: tuple[str, ...], group_vars: dict) -> FleetDevice:
    merged = {**_merged_group_vars(path, name, groups, group_vars), **spec}
    profile_ref = merged.pop("profile", None)
    fields = {k: v for k, v in merged.items() if k in PROFILE_FIELDS}
    extra = {k: v for k, v in merged.items() if k not in PROFILE_FIELDS}
    if "workdir" in fields and isinstance(fields["workdir"], str):
        connection = fields.get("connection")
        if connection == "local" or (connection is None and profile_ref is None and "host" not in fields):
            workdir = Path(fields["workdir"]).expanduser()
            fields["workdir"] = str(workdir if workdir.is_absolute() else (path.parent / workdir).resolve())
    where = f"{path}: device {name!r}"
    fields["name"] = name
    try:
        if profile_ref is not None:
            if profile_ref not in PROFILE_REF:
                raise EdgekitError(f"{where}: field 'profile' must be {PROFILE_REF.text}, got {profile_ref!r}")
            ref = profile_ref
            if ref.endswith((".yaml", ".yml")) or "/" in ref:
                ref_path = Path(ref).expanduser()
                ref = str(ref_path if ref_path.is_absolute() else path.parent / ref_path)
            profile = with_overrides(load_profile(ref), **fields)
        else:
            fields.setdefault("description", f"device {name} of fleet {path.name}")
            fields.setdefault("arch", "any")
            fields.setdefault("connection", "ssh" if "host" in fields else "local")
            profile = parse_profile(path, fields, where=where)
    except EdgekitError as exc:
        message = str(exc)
        raise EdgekitError(message if message.startswith(where) else f"{where}: {message}") from None
    return FleetDevice(name=name, profile=profile, groups=groups, vars={**fields, **extra})
