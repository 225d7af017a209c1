"""Start, stop and health-check the runner that serves on a device, for fleet rollouts.

Two kinds, chosen per device:

- systemd: `edgekit deploy --service serve|live` installed a unit (recorded in the device's
  current.json); a restart rewrites the unit with the model (and `--shadow`) and restarts it. Health is
  `systemctl is-active` plus `systemctl show -p NRestarts`: a count that grew since the restart is a
  crash loop (Restart=on-failure hides it otherwise).
- process: the fleet file gives the device `service: "live incoming --existing"` (runner arguments after
  the model); the runner runs detached (setsid) in the work directory, its pid in `service.pid` and its
  output in `service.log`. Health is the pid being alive. This is how local devices, containers and
  boards without systemd serve, and how the tests run a whole rollout on one machine.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from edgekit.devices import RUNNER_NAME
from edgekit.errors import EdgekitError
from edgekit.service import MODE, ServiceSpec, install_service
from edgekit.transport.ssh import remote_quote

PID_FILE, LOG_FILE = "service.pid", "service.log"
STOP_WAIT_S = 15  # a runner closes its log (and its shadow queue) on SIGTERM; give it that long


@dataclass(frozen=True)
class ServiceKind:
    kind: str  # "systemd" | "process"
    mode: str  # serve | live
    args: tuple[str, ...]
    unit: str | None = None


def service_of(device, current) -> ServiceKind:
    """How this device serves: its systemd unit from deploy, else the fleet file's `service:`."""
    configured = device.vars.get("service")
    if configured:
        words = shlex.split(configured) if isinstance(configured, str) else [str(w) for w in configured]
        if not words or words[0] not in MODE:
            raise EdgekitError(f"{device.name}: service {configured!r} must start with {MODE.text}, e.g. "
                               "'live incoming --existing'")
        return ServiceKind("process", words[0], tuple(words[1:]))
    unit = (current.service or {}) if current else {}
    if unit.get("unit") and unit.get("mode"):
        return ServiceKind("systemd", unit["mode"], tuple(unit.get("args") or ()), unit["unit"])
    raise EdgekitError(f"{device.name}: nothing serves a model there to shadow; deploy with `--service serve|live`"
                       " or give the device `service: 'live SOURCE ...'` in the fleet file")


def _sh(target, script: str, what: str, timeout: float = 60) -> tuple[int, str, str]:
    code, out, err = target.run(["sh", "-c", script], timeout=timeout, what=what)
    return code, out.decode("utf-8", "replace"), err


# A dead process whose parent has gone stays a zombie until init reaps it, and `kill -0` still finds it;
# some container inits reap late, so a zombie counts as dead.
_ALIVE = "alive() { kill -0 \"$1\" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' /proc/\"$1\"/status; }; "


def _stop_script() -> str:
    return (f"{_ALIVE}if [ -f {PID_FILE} ]; then pid=$(cat {PID_FILE}); kill \"$pid\" 2>/dev/null; i=0; "
            f"while alive \"$pid\" && [ $i -lt {STOP_WAIT_S * 10} ]; do sleep 0.1; i=$((i+1)); done; "
            f"kill -9 \"$pid\" 2>/dev/null; rm -f {PID_FILE}; fi")


def start(target, device, service: ServiceKind, model: str, model_sha256: str, *,
          shadow: str | None = None, tag: str | None = None) -> dict:
    """(Re)start the device's runner on `model` (relative to the work directory), with a shadow if given."""
    extra = ("--shadow", shadow, "--shadow-tag", tag or "") if shadow else ()
    if service.kind == "systemd":
        spec = ServiceSpec.parse(service.mode, shlex.join((*service.args, *extra)))  # checked as deploy does
        done = install_service(target, device.profile, spec, runner=target.path(RUNNER_NAME),
                               model=target.path(model), model_sha256=model_sha256)
        return {"unit": done["unit"], "state": done["state"], "restarts": restarts(target, service)}
    argv = [device.profile.interpreter, RUNNER_NAME, service.mode, model, *service.args, *extra]
    command = " ".join([remote_quote(argv[0]), *map(shlex.quote, argv[1:])])
    script = (f"{_stop_script()}; "
              f"if command -v setsid >/dev/null 2>&1; then S=setsid; else S=; fi; "
              f"$S {command} </dev/null >{LOG_FILE} 2>&1 & echo $! > {PID_FILE}.part && "
              f"mv -f {PID_FILE}.part {PID_FILE} && cat {PID_FILE}")
    code, out, err = _sh(target, script, f"start the runner's {service.mode}")
    if code != 0 or not out.strip().isdigit():
        raise EdgekitError(f"{device.name}: could not start the runner ({(err.strip().splitlines() or ['?'])[-1]})")
    return {"pid": int(out.strip()), "restarts": 0}


def stop(target, service: ServiceKind) -> None:
    if service.kind == "process":
        _sh(target, _stop_script(), "stop the runner", timeout=STOP_WAIT_S + 30)


def restarts(target, service: ServiceKind) -> int:
    """systemd's restart count of the unit (0 for a process service)."""
    if service.kind != "systemd":
        return 0
    code, out, _ = _sh(target, f"systemctl show -p NRestarts --value {shlex.quote(service.unit)}",
                       "read the service's restart count")
    return int(out.strip()) if code == 0 and out.strip().isdigit() else 0


def healthy(target, service: ServiceKind, baseline: int, settle_s: float) -> str | None:
    """None when the service still runs `settle_s` after a (re)start; else why not (a crash loop)."""
    time.sleep(settle_s)
    if service.kind == "systemd":
        count = restarts(target, service)
        code, out, _ = _sh(target, f"systemctl is-active {shlex.quote(service.unit)}", "check the service")
        if count > baseline:
            return f"{service.unit} restarted {count - baseline} times since the promotion (crash loop)"
        if out.strip() != "active":
            return f"{service.unit} is {out.strip() or 'not active'}"
        return None
    code, out, _ = _sh(target, f"{_ALIVE}[ -f {PID_FILE} ] && alive $(cat {PID_FILE}) && echo alive",
                       "check the runner")
    if out.strip() == "alive":
        return None
    _, tail, _ = _sh(target, f"tail -n 3 {LOG_FILE} 2>/dev/null", "read the runner's log")
    last = next((line for line in reversed(tail.splitlines()) if line.strip()), "no output")
    return f"the runner exited after the restart ({last.strip()[:200]})"
