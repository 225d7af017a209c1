"""`edgekit fleet rollout`: a new model reaches the fleet wave by wave, each wave behind a shadow check.

Per wave: copy the candidate to every device (not yet current), restart the device's runner on its
serving model with `--shadow CANDIDATE --shadow-tag <rollout id>`, wait the shadow period, read each
device's `shadow-report`, and gate: comparisons >= min_samples, agreement >= min_agreement, candidate
errors <= max_errors, candidate p90 invoke <= max_p90_ms. All pass: promote (current.json points at the
candidate, the old model stays as `previous`, the runner restarts on the candidate) and check after
`settle_s` that the service has not crashed or restarted (systemd NRestarts). Anything else rolls the
whole wave back to the model it served before and stops the rollout with a one-line reason.

Every step is recorded in the rollout manifest (format: edgekit.fleet.rollout_manifest), saved
atomically after each, so a killed host can `--resume` (continue the wave in flight) or
`--resume --abort` (roll it back).
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit import manifests
from edgekit.artifacts import process_alive, sha256_file, utc_now, write_json_atomic
from edgekit.config import FRACTION, LATENCY_MS, Check, Range, duration_seconds, validate
from edgekit.deploy import deploy
from edgekit.device_state import CurrentModel, parse_current, read_current, write_current
from edgekit.errors import EdgekitError
from edgekit.fleet import services
from edgekit.fleet.inventory import Fleet, FleetDevice
from edgekit.fleet.ops import stamp, who
from edgekit.fleet.parallel import for_each_device
from edgekit.fleet.rollout_manifest import KIND, SCHEMA, read_manifest, rollouts_dir
from edgekit.transport.targets import make_target


def parse_duration(text: str, option: str = "--shadow") -> float:
    """`30m`, `90s`, `1h` or plain seconds."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise EdgekitError(f"{option} {text!r}: use a number of seconds or a duration like 90s, 30m, 1h")
    return seconds


WAIT_S = Range(0, 30 * 86_400, "seconds", integer=False)  # a shadow period or a settle time: up to 30 days


@dataclass(frozen=True)
class RolloutSettings:
    """The gate of every wave, as `edgekit fleet rollout` options; `config.validate` checks them."""

    waves: tuple[str, ...] = Check("at least one group, e.g. canary,all", bool).field()
    shadow_s: float = WAIT_S.field(option="--shadow")
    min_agreement: float = FRACTION.field()
    max_errors: int = Range(0, 1_000_000, "errors").field(0)
    max_p90_ms: float | None = LATENCY_MS.field(None)
    min_samples: int = Range(0, 10_000_000, "comparisons").field(1)
    settle_s: float = WAIT_S.field(10.0, option="--settle")


def plan_waves(fleet: Fleet, waves: tuple[str, ...], group: str | None = None) -> list[dict]:
    """Each wave's devices: its group's, minus those in earlier waves, within `group` (all: every device)."""
    scope = {d.name for d in fleet.select(group)}
    seen: set[str] = set()
    plan = []
    for wave in waves:
        members = [d.name for d in fleet.select(wave) if d.name in scope and d.name not in seen]
        seen.update(members)
        plan.append({"name": wave, "devices": members, "state": "pending" if members else "promoted"})
    if not seen:
        raise EdgekitError(f"{fleet.source}: waves {','.join(waves)} hold no devices")
    return plan


class Rollout:
    """One rollout's manifest and the steps that move it forward; every change is saved at once."""

    def __init__(self, fleet: Fleet, directory: Path, manifest: dict, model: Path,
                 accept_new_host_key: bool = False, parallel: int = 8, progress=None):
        self.fleet, self.directory, self.m, self.model = fleet, directory, manifest, model
        self.accept_new_host_key, self.parallel = accept_new_host_key, parallel
        self.settings = RolloutSettings(**{**manifest["settings"], "waves": tuple(manifest["settings"]["waves"])})
        self.stream = progress if progress is not None else sys.stderr
        self.guard = threading.RLock()  # devices of a wave move in parallel threads; the manifest is one

    @property
    def id(self) -> str:
        return self.m["id"]

    @property
    def path(self) -> Path:
        return self.directory / "manifest.json"

    def save(self) -> None:
        with self.guard:
            self.m["updated"] = utc_now()
            write_json_atomic(self.path, self.m)

    def event(self, device: str | None, step: str, detail: str = "") -> None:
        with self.guard:
            self.m["events"].append({"time": utc_now(), "device": device, "step": step, "detail": detail})
        print(f"rollout {self.id}: {device + ': ' if device else ''}{step}{' (' + detail + ')' if detail else ''}",
              file=self.stream, flush=True)

    def set_device(self, name: str, **changes) -> None:
        with self.guard:
            self.m["devices"][name].update(changes, updated=utc_now())
            self.save()

    def _target(self, device: FleetDevice):
        return make_target(device.profile, accept_new_host_key=self.accept_new_host_key)

    # --- the steps on one device

    def _stage(self, device: FleetDevice) -> None:

        target = self._target(device)
        target.prepare()
        current = read_current(target)
        if current is None:
            raise EdgekitError(f"{device.name}: no current model (no current.json in {target.workdir}); run "
                               "`edgekit fleet deploy` first so there is something to roll back to")
        sha = self.m["variant"]["sha256"]
        self.set_device(device.name, before=json.loads(json.dumps(dataclasses.asdict(current))))
        if current.model_sha256 == sha:
            self.set_device(device.name, state="promoted", gate={"passed": True, "reason": "already serving it"})
            return
        service = services.service_of(device, current)
        deploy(device.profile, self.model, accept_new_host_key=self.accept_new_host_key, make_current=False)
        candidate = f"models/{sha[:12]}/{self.model.name}"
        started = services.start(target, device, service, current.model, current.model_sha256, shadow=candidate,
                                 tag=self.id)
        self.set_device(device.name, state="shadow", candidate=candidate, shadow_started=utc_now(),
                        restarts_baseline=started.get("restarts", 0))
        self.event(device.name, "shadow", f"candidate {sha[:12]} beside {current.model_sha256[:12]}")

    def _gate(self, device: FleetDevice) -> dict:
        entry = self.m["devices"][device.name]
        before = entry["before"]
        target = self._target(device)
        # A runner that died with the shadow (a candidate it cannot load beside the model) logged nothing:
        # say why, rather than "no comparisons".
        died = services.healthy(target, services.service_of(device, parse_current(
            json.dumps({"schema": 1, **before}), "before")), entry.get("restarts_baseline", 0), 0)
        if died:
            raise EdgekitError(f"{device.name}: with the shadow, {died}")
        db = _db_option(self.fleet.devices[device.name], before) or posixpath.join(
            posixpath.dirname(before["model"]), "edgekit_runner.db")
        report = target.run_runner(["shadow-report", "--db", db, "--tag", self.id], timeout=120)
        s = self.settings
        gate = {"rows": report.get("rows"), "agreement": report.get("agreement"), "errors": report.get("errors"),
                "p90_ms": (report.get("candidate_ms") or {}).get("p90"), "score_shift": report.get("score_shift")}
        reasons = []
        if (gate["rows"] or 0) < max(s.min_samples, 1):
            reasons.append(f"{gate['rows'] or 0} shadow comparisons, need {max(s.min_samples, 1)} (no traffic?)")
        if gate["agreement"] is not None and gate["agreement"] < s.min_agreement:
            reasons.append(f"agreement {gate['agreement']:.4f} < {s.min_agreement}")
        if (gate["errors"] or 0) > s.max_errors:
            reasons.append(f"{gate['errors']} candidate errors > {s.max_errors}")
        if s.max_p90_ms is not None and gate["p90_ms"] is not None and gate["p90_ms"] > s.max_p90_ms:
            reasons.append(f"p90 {gate['p90_ms']:.2f} ms > {s.max_p90_ms} ms")
        gate.update(passed=not reasons, reason="; ".join(reasons) or None)
        self.set_device(device.name, gate=gate)
        self.event(device.name, "gate " + ("passed" if not reasons else "FAILED"), gate["reason"] or
                   f"agreement {gate['agreement']}, {gate['rows']} comparisons")
        return gate

    def _promote(self, device: FleetDevice) -> None:
        entry = self.m["devices"][device.name]
        before = parse_current(json.dumps({"schema": 1, **entry["before"]}), f"{self.path}: {device.name}.before")
        target = self._target(device)
        service = services.service_of(device, before)
        sha = self.m["variant"]["sha256"]
        write_current(target, CurrentModel(model=entry["candidate"], model_sha256=sha,
                                           variant=self.m["variant"]["name"], previous=before.ref,
                                           service=before.service, by=f"rollout {self.id}"))
        # The count right after the restart is the baseline: whether a manual restart resets it varies
        # between systemd versions, automatic restarts after it always add to it.
        started = services.start(target, device, service, entry["candidate"], sha)
        self.set_device(device.name, state="promoted", restarts_baseline=started.get("restarts", 0))
        self.event(device.name, "promoted", f"serving {sha[:12]}, {before.model_sha256[:12]} kept for rollback")

    def _check_health(self, device: FleetDevice) -> None:
        entry = self.m["devices"][device.name]
        if entry.get("candidate") is None:  # it already served the candidate: nothing was restarted
            return
        before = parse_current(json.dumps({"schema": 1, **entry["before"]}), f"{self.path}: {device.name}.before")
        target = self._target(device)
        reason = services.healthy(target, services.service_of(device, before), entry.get("restarts_baseline", 0),
                                  self.settings.settle_s)
        if reason:
            raise EdgekitError(f"{device.name}: {reason}")

    def _roll_back(self, device: FleetDevice) -> None:
        entry = self.m["devices"][device.name]
        if entry["state"] in ("pending", "rolled-back") or entry.get("before") is None:
            self.set_device(device.name, state="rolled-back" if entry["state"] != "failed" else "failed")
            return
        if entry["state"] == "failed" and entry.get("candidate") is None:
            return  # failed before its runner was touched: nothing to undo
        before = parse_current(json.dumps({"schema": 1, **entry["before"]}), f"{self.path}: {device.name}.before")
        target = self._target(device)
        current = read_current(target)
        if entry["state"] == "promoted" or (current and current.model_sha256 != before.model_sha256):
            write_current(target, dataclasses.replace(before, by=f"rollback of rollout {self.id}"))
        if entry.get("candidate") is not None:
            services.start(target, device, services.service_of(device, before), before.model,
                           before.model_sha256)
        self.set_device(device.name, state="rolled-back")
        self.event(device.name, "rolled back", f"serving {before.model_sha256[:12]} again")

    # --- waves

    def _each(self, names: list[str], fn, label: str):
        devices = [self.fleet.devices[n] for n in names]
        return for_each_device(devices, fn, parallel=self.parallel, label=label, progress=self.stream)

    def _fail_devices(self, outcomes) -> list[str]:
        reasons = []
        for outcome in outcomes:
            if not outcome.ok:
                error = outcome.error if outcome.error.startswith(outcome.device) else f"{outcome.device}: " \
                    f"{outcome.error}"
                self.set_device(outcome.device, state="failed", error=error)
                reasons.append(error)
        return reasons

    def _stop(self, wave: dict, reason: str, state: str = "rolled-back") -> dict:
        """Roll the wave back (devices that cannot be reached stay `failed`) and end the rollout.

        A failed device is tried too: it may have failed after its runner was restarted with the shadow."""
        outcomes = self._each(wave["devices"], self._roll_back, "rollback")
        for outcome in outcomes:
            if not outcome.ok:
                self.set_device(outcome.device, state="failed", error=f"rollback failed: {outcome.error}")
        wave["state"] = "rolled-back"
        self.m.update(state=state, reason=reason)
        self.event(None, f"stopped: {reason}")
        self.save()
        return self.m

    def _wait_shadow(self, wave: dict) -> None:
        started = [self.m["devices"][n].get("shadow_started") for n in wave["devices"]
                   if self.m["devices"][n]["state"] == "shadow"]
        if not started:
            return
        from datetime import datetime

        first = min(datetime.fromisoformat(s).timestamp() for s in started if s)
        remaining = first + self.settings.shadow_s - time.time()
        if remaining > 0:
            self.event(None, f"wave {wave['name']}: shadow", f"{remaining:.0f} s left")
            time.sleep(remaining)

    def run_wave(self, wave: dict) -> str | None:
        """Move one wave to promoted; returns why it could not (the wave is rolled back then)."""
        devices = self.m["devices"]
        if any(devices[n]["state"] in ("rolled-back", "failed") for n in wave["devices"]):
            return "its rollback was interrupted; finishing it"  # a host killed while rolling back
        pending = [n for n in wave["devices"] if devices[n]["state"] == "pending"]
        wave["state"] = "shadow"
        self.save()
        reasons = self._fail_devices(self._each(pending, self._stage, "shadow"))
        if reasons:
            return reasons[0]
        self._wait_shadow(wave)
        ungated = [n for n in wave["devices"] if devices[n]["state"] == "shadow" and not devices[n].get("gate")]
        reasons = self._fail_devices(self._each(ungated, self._gate, "shadow-report"))
        failed_gate = [f"{n}: {devices[n]['gate']['reason']}" for n in wave["devices"]
                       if devices[n].get("gate") and not devices[n]["gate"]["passed"]]
        if reasons or failed_gate:
            return (reasons + failed_gate)[0]
        to_promote = [n for n in wave["devices"] if devices[n]["state"] == "shadow"]
        reasons = self._fail_devices(self._each(to_promote, self._promote, "promote"))
        if reasons:
            return reasons[0]
        unchecked = [n for n in wave["devices"] if not devices[n].get("healthy")]
        outcomes = self._each(unchecked, self._check_health, "health")
        for outcome in outcomes:
            if outcome.ok:
                devices[outcome.device]["healthy"] = True
        self.save()
        crashed = [o.error for o in outcomes if not o.ok]
        if crashed:
            return crashed[0]
        wave["state"] = "promoted"
        self.event(None, f"wave {wave['name']} promoted", f"{len(wave['devices'])} devices")
        return None

    def run(self, abort: bool = False) -> dict:
        """Carry the rollout to its end from wherever the manifest says it is."""
        with self._lock():
            for wave in self.m["waves"]:
                if wave["state"] == "promoted":
                    continue
                if abort:
                    return self._stop(wave, f"aborted by {who()} during wave {wave['name']}", state="aborted")
                reason = self.run_wave(wave)
                if reason:
                    return self._stop(wave, f"wave {wave['name']}: {reason}")
                self.save()
            self.m.update(state="done", reason=None)
            self.event(None, "done", f"{self.m['variant']['sha256'][:12]} serves on every device of "
                       f"{', '.join(w['name'] for w in self.m['waves'])}")
            self.save()
            return self.m

    def _lock(self):
        import contextlib

        lock = self.directory / "lock"

        @contextlib.contextmanager
        def held():
            try:
                pid = int(lock.read_text().strip())
            except (OSError, ValueError):
                pid = None
            if pid and pid != os.getpid() and process_alive(pid):
                raise EdgekitError(f"{self.directory}: rollout {self.id} is being run by process {pid}; wait for "
                                   "it or stop it before --resume")
            lock.write_text(str(os.getpid()))
            try:
                yield
            finally:
                lock.unlink(missing_ok=True)

        return held()


def _db_option(device: FleetDevice, before: dict) -> str | None:
    """The prediction log the service was told to use (`--db PATH` in its arguments), if any."""
    try:
        args = list(services.service_of(device, parse_current(json.dumps({"schema": 1, **before}), "before")).args)
    except EdgekitError:
        return None
    for i, arg in enumerate(args):
        if arg == "--db" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--db="):
            return arg.split("=", 1)[1]
    return None


def start(fleet: Fleet, model: Path, settings: RolloutSettings, *, group: str | None = None, **options) -> Rollout:
    """A new rollout's manifest, saved before anything touches a device."""

    validate(settings)
    model = Path(model).resolve()
    sha = sha256_file(model)
    found = manifests.read_optional(model.parent)
    plan = plan_waves(fleet, settings.waves, group)
    rollout_id = f"{stamp()}-{sha[:8]}"
    directory = rollouts_dir(fleet) / rollout_id
    devices = {name: {"wave": wave["name"], "state": "pending", "before": None, "candidate": None, "gate": None,
                      "shadow_started": None, "error": None, "updated": utc_now()}
               for wave in plan for name in wave["devices"]}
    manifest = {
        "kind": KIND, "schema": SCHEMA, "id": rollout_id, "fleet": fleet.name, "fleet_file": str(fleet.source),
        "who": who(), "created": utc_now(), "updated": utc_now(),
        "variant": {"path": str(model), "name": getattr(found, "name", None) or model.parent.name, "sha256": sha},
        "settings": {**dataclasses.asdict(settings), "waves": list(settings.waves)},
        "state": "running", "reason": None, "waves": plan, "devices": devices, "events": [],
    }
    rollout = Rollout(fleet, directory, manifest, model, **options)
    rollout.save()
    return rollout


def resume(fleet: Fleet, model: Path, rollout_id: str | None = None, **options) -> Rollout:
    """The newest unfinished rollout of this model on this fleet (or the one named)."""
    model = Path(model).resolve()
    sha = sha256_file(model)
    candidates = sorted(rollouts_dir(fleet).glob("*/manifest.json"), reverse=True)
    for path in candidates:
        manifest = read_manifest(path)
        if rollout_id and manifest["id"] != rollout_id:
            continue
        if rollout_id or (manifest["state"] == "running" and manifest["variant"]["sha256"] == sha):
            if manifest["variant"]["sha256"] != sha:
                raise EdgekitError(f"{path}: rollout {manifest['id']} is of {manifest['variant']['sha256'][:12]}, "
                                   f"not {model} ({sha[:12]})")
            if manifest["state"] != "running":
                raise EdgekitError(f"{path}: rollout {manifest['id']} already ended ({manifest['state']}); start a "
                                   "new one")
            try:
                return Rollout(fleet, path.parent, manifest, model, **options)
            except (KeyError, TypeError) as exc:
                raise EdgekitError(f"{path}: damaged rollout manifest ({exc}); roll back by hand with "
                                   "`edgekit fleet deploy` of the previous model") from None
    which = f"rollout {rollout_id}" if rollout_id else f"unfinished rollout of {model.name} ({sha[:12]})"
    raise EdgekitError(f"no {which} under {rollouts_dir(fleet)}; start one without --resume")
