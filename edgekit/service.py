"""A systemd service that keeps the runner (`serve` or `live`) running on a device across crashes and reboots.

`edgekit deploy VARIANT --device pi --service serve` writes the unit, installs it under
/etc/systemd/system with `sudo -n` (or directly as root), enables and (re)starts it;
`--remove-service serve` stops, disables and deletes it. The unit runs as the device user, restarts on
failure, and reads EDGEKIT_RUNNER_TOKEN from an environment file beside the work directory (mode 600,
created once with a fresh token and kept across deployments), never from its command line.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from edgekit.config import OneOf, Rule, validate
from edgekit.devices import runner_module
from edgekit.errors import EdgekitError
from edgekit.transport.targets import make_target  # late: transport imports devices, as this module does

MODES = ("serve", "live")
MODE = OneOf(MODES)  # --service, --remove-service, and a fleet device's `service:` words
ENV_FILE = "runner.env"
NO_SYSTEMD, NO_SUDO = 90, 91  # exit codes of the device-side script

_FACTS = "import getpass, sys; print(sys.executable); print(getpass.getuser())"


@dataclass(frozen=True)
class ServiceSpec:
    """What to run as a service: `serve` or `live`, with extra runner arguments (a live SOURCE, --port...).

    Built from `deploy` options by `parse`, which enforces the declared rules and then parses the
    arguments as the device's runner will."""

    mode: str = MODE.field(option="--service")
    args: tuple[str, ...] = field(default_factory=tuple)
    tls: bool = False  # serve over HTTPS with a certificate made on the device (edgekit.certificate)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda s: not s.tls or s.mode == "serve",
             "{tls}: only `--service serve` answers HTTP; drop --tls or use --service serve"),
    )

    def _check(self) -> None:
        """Parse the arguments as the device's runner will (a live SOURCE is required): a typo fails here,
        before anything is copied."""
        module = runner_module()
        argv = [self.mode, "model.tflite", *self.args]
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                parsed = module.build_parser().parse_args(argv)
        except SystemExit:
            message = errors.getvalue().strip().splitlines()[-1:] or ["invalid"]
            reason = message[0].split("error: ", 1)[-1].removesuffix("; see --help")
            raise EdgekitError(f"--service-args {shlex.join(self.args)!r}: {reason}") from None
        if self.mode != "serve":
            return
        if self.tls and (parsed.tls_cert or parsed.tls_key):
            raise EdgekitError(f"--service-args {shlex.join(self.args)!r}: --tls makes the certificate itself; "
                               "drop --tls-cert/--tls-key or drop --tls")
        if not self.tls and not parsed.tls_cert and parsed.host not in module.LOCAL_HOSTS:
            raise EdgekitError(f"--service-args {shlex.join(self.args)!r}: serving on --host {parsed.host} sends "
                               "the token in clear without TLS; add --tls (a certificate made on the device, "
                               "its fingerprint recorded) or bind 127.0.0.1")

    @classmethod
    def parse(cls, mode: str, args: str | None, tls: bool = False) -> ServiceSpec:
        try:
            words = tuple(shlex.split(args or ""))
        except ValueError as exc:
            raise EdgekitError(f"--service-args {args!r}: {exc}; quote it as a shell would") from None
        spec = cls(mode, words, tls)
        validate(spec)
        spec._check()
        return spec

    @property
    def unit_name(self) -> str:
        return f"edgekit-{self.mode}.service"


def systemd_quote(arg: str) -> str:
    """One ExecStart word: specifiers (%) and variables ($) escaped, quoted when it holds spaces or quotes."""
    text = arg.replace("\\", "\\\\").replace("%", "%%").replace("$", "$$")
    if any(c in text for c in " \t\"'") or not text:
        return '"' + text.replace('"', '\\"') + '"'
    return text


def unit_text(spec: ServiceSpec, *, python: str, runner: str, model: str, workdir: str, user: str,
              description: str, tls=None) -> str:
    """The unit file. Every path must be absolute: systemd neither expands ~ nor searches a relative PATH.
    `tls` (an edgekit.certificate.Certificate) adds --tls-cert/--tls-key to `serve`."""
    for name, path in (("python", python), ("runner", runner), ("model", model), ("workdir", workdir)):
        if not posixpath.isabs(path):
            raise EdgekitError(f"service {name} path {path!r} is not absolute; systemd needs absolute paths")
    command = [python, runner, spec.mode, model, *spec.args] if spec.mode == "serve" else \
        [python, runner, "live", model, *spec.args]
    if tls is not None:
        command += ["--tls-cert", tls.cert, "--tls-key", tls.key]
    groups = "SupplementaryGroups=video\n" if spec.mode == "live" else ""  # /dev/video* belongs to 'video'
    return (
        "[Unit]\n"
        f"Description={description}\n"
        "After=network-online.target\nWants=network-online.target\n"
        "StartLimitIntervalSec=300\nStartLimitBurst=10\n\n"
        "[Service]\nType=simple\n"
        f"User={user}\n{groups}"
        f"WorkingDirectory={workdir}\n"
        f"EnvironmentFile=-{posixpath.join(workdir, ENV_FILE)}\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        f"ExecStart={' '.join(systemd_quote(word) for word in command)}\n"
        "Restart=on-failure\nRestartSec=5\n"
        "KillSignal=SIGTERM\nTimeoutStopSec=30\n"  # the runner stops cleanly on SIGTERM and fsyncs its log
        "NoNewPrivileges=yes\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def _device_script(body: str) -> str:
    """A POSIX sh script: refuse without systemd or root rights, then run `body` with $SUDO as needed."""
    return (
        f"[ -d /run/systemd/system ] && command -v systemctl >/dev/null || exit {NO_SYSTEMD}\n"
        'if [ "$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; '
        f"else exit {NO_SUDO}; fi\n"
        "set -e\n" + body
    )


def _run_script(target, script: str, what: str, removing: bool = False) -> str:
    code, out, err = target.run(["sh", "-c", script], timeout=120, what=what)
    name = target.name
    if code == NO_SYSTEMD and removing:
        raise EdgekitError(f"{name}: this device does not run systemd (no /run/systemd/system), so it has no "
                           "edgekit service to remove; stop a runner you started yourself where you started it")
    if code == NO_SYSTEMD:
        raise EdgekitError(f"{name}: this device does not run systemd (no /run/systemd/system), so no service "
                           "can be installed; start the runner from your own init system or a shell instead")
    if code == NO_SUDO:
        raise EdgekitError(f"{name}: installing a systemd unit needs root; give the device user passwordless sudo "
                           "(or deploy as root) and run the command again")
    if code != 0:
        detail = (err.strip().splitlines() or out.decode("utf-8", "replace").strip().splitlines()
                  or [f"exit code {code}"])[-1]
        raise EdgekitError(f"{name}: {what} failed ({detail[:300]})")
    return out.decode("utf-8", "replace")


def check_service_possible(target, spec: ServiceSpec) -> None:
    """Raise the one-line answer when the device cannot take a service (no systemd, no root rights): deploy
    asks before copying anything, so a refused --service leaves the device as it was."""
    _run_script(target, _device_script("true\n"), f"install {spec.unit_name}")


def install_service(target, profile, spec: ServiceSpec, *, runner: str, model: str, model_sha256: str,
                    tls=None) -> dict:
    """Write, install, enable and (re)start the unit on the device behind `target`; returns what was done.

    The unit file is copied into the work directory and moved into place by the script; if the script
    fails, the copy is removed, so no stray unit file stays beside the models.
    """
    code, out, err = target.run([profile.interpreter, "-c", _FACTS], timeout=60, what="read the device's Python")
    facts = out.decode("utf-8", "replace").split()
    if code != 0 or len(facts) < 2:
        raise EdgekitError(f"{target.name}: cannot run {profile.interpreter} on the device "
                           f"({(err.strip().splitlines() or ['no output'])[-1][:200]})")
    python, user = facts[-2], facts[-1]
    unit = unit_text(spec, python=python, runner=runner, model=model, workdir=target.workdir, user=user,
                     description=f"edgekit runner {spec.mode} (model sha256 {model_sha256[:12]})", tls=tls)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / spec.unit_name
        local.write_text(unit)
        target.put(local, spec.unit_name)
    env_file = target.path(ENV_FILE)
    make_token = f"{shlex.quote(python)} -c 'import secrets; print(secrets.token_urlsafe(24))'"
    body = (  # the token is made on the device, so it never crosses the network or shows in `ps`
        f"cd {shlex.quote(target.workdir)}\n"
        f"[ -f {ENV_FILE} ] || (umask 077 && printf 'EDGEKIT_RUNNER_TOKEN=%s\\n' \"$({make_token})\" "
        f"> {ENV_FILE})\n"
        f"$SUDO install -m 0644 {spec.unit_name} /etc/systemd/system/{spec.unit_name}\n"
        f"rm -f {spec.unit_name}\n"
        "$SUDO systemctl daemon-reload\n"
        f"$SUDO systemctl enable {spec.unit_name} >/dev/null 2>&1\n"
        f"$SUDO systemctl restart {spec.unit_name}\n"
        f"systemctl is-active {spec.unit_name} || true\n"
    )
    try:
        state = _run_script(target, _device_script(body), f"install {spec.unit_name}").strip().splitlines()
    except EdgekitError:
        with contextlib.suppress(EdgekitError):
            target.remove(spec.unit_name)
        raise
    return {"unit": spec.unit_name, "path": f"/etc/systemd/system/{spec.unit_name}", "user": user,
            "env_file": env_file, "state": state[-1] if state else "unknown",
            "logs": f"journalctl -u {spec.unit_name} -f", "remove": f"edgekit deploy --device {profile.name} "
            f"--remove-service {spec.mode}"}


def remove_service(target, mode: str) -> dict:
    """Stop, disable and delete the unit; removing one that is not installed is not an error."""
    MODE.check(mode, "--remove-service")
    unit = f"edgekit-{mode}.service"
    body = (
        f"$SUDO systemctl disable --now {unit} >/dev/null 2>&1 || true\n"
        f"$SUDO rm -f /etc/systemd/system/{unit}\n"
        "$SUDO systemctl daemon-reload\n"
        "$SUDO systemctl reset-failed >/dev/null 2>&1 || true\n"
    )
    _run_script(target, _device_script(body), f"remove {unit}", removing=True)
    return {"device": target.name, "unit": unit, "removed": True}


def remove_from_device(profile, mode: str, *, accept_new_host_key: bool = False) -> dict:
    """`edgekit deploy --remove-service MODE`: the service goes, the deployed models stay."""

    target = make_target(profile, accept_new_host_key=accept_new_host_key)
    target.prepare()
    return remove_service(target, mode)
