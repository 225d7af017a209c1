"""Fleet operations (deploy, doctor, bench) as the single-device library functions run over a group.

Each operation's outcome is written atomically to `$EDGEKIT_HOME/fleet/<fleet>/<operation>/<time>/
manifest.json` (kind `fleet-operation`: fleet, file, operation, who, started, finished, and one entry
per device: ok, seconds, error, result), so "what did last night's deploy do on cam-17" has an answer.
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import datetime, timezone
from pathlib import Path

from edgekit.artifacts import edgekit_home, utc_now, write_json_atomic
from edgekit.bench.run import collect_variants, run_bench
from edgekit.deploy import deploy, doctor
from edgekit.errors import EdgekitError
from edgekit.fleet.inventory import Fleet, FleetDevice
from edgekit.fleet.parallel import DeviceOutcome, for_each_device
from edgekit.render import TERMINAL_WIDTH, clip, fixed_line, fmt

OPERATION_KIND = "fleet-operation"


def fleet_dir(fleet: Fleet) -> Path:
    return edgekit_home() / "fleet" / fleet.name


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")[:-3]


def record(fleet: Fleet, operation: str, outcomes: list[DeviceOutcome], started: str, extra: dict | None = None
           ) -> Path:
    directory = fleet_dir(fleet) / operation / stamp()
    manifest = {
        "kind": OPERATION_KIND, "schema": 1, "fleet": fleet.name, "fleet_file": str(fleet.source),
        "operation": operation, "who": who(), "started": started, "finished": utc_now(), **(extra or {}),
        "devices": {o.device: {"ok": o.ok, "seconds": o.seconds, "error": o.error, "result": o.value}
                    for o in outcomes},
    }
    write_json_atomic(directory / "manifest.json", _plain(manifest))
    return directory


def model_path(variant: Path) -> Path:
    variant = Path(variant)
    path = variant / "model.tflite" if variant.is_dir() else variant
    if not path.is_file():
        raise EdgekitError(f"{variant}: no such model file or variant directory (expected model.tflite in it)")
    return path


def deploy_fleet(fleet: Fleet, devices: list[FleetDevice], variant: Path, *, parallel: int,
                 accept_new_host_key: bool = False, service=None) -> tuple[list[DeviceOutcome], Path]:
    """`edgekit deploy` on every device; with `service` (edgekit.service.ServiceSpec) each gets the
    systemd unit too, which `fleet rollout` then restarts with the shadow."""

    model = model_path(variant)
    started = utc_now()

    def one(device: FleetDevice) -> dict:
        result = deploy(device.profile, model, accept_new_host_key=accept_new_host_key, service=service)
        return {"model_sha256": result["model_sha256"], "model": result["model"], "runtime": result["runtime"],
                "current": result.get("current"), "record": result["record"], "service": result.get("service")}

    outcomes = for_each_device(devices, one, parallel=parallel, label="deploy")
    return outcomes, record(fleet, "deploy", outcomes, started, {"variant": str(model)})


def doctor_fleet(fleet: Fleet, devices: list[FleetDevice], *, parallel: int,
                 accept_new_host_key: bool = False) -> tuple[list[DeviceOutcome], Path]:

    started = utc_now()

    def one(device: FleetDevice) -> dict:
        report = doctor(device.profile, accept_new_host_key=accept_new_host_key)
        if not report.get("ok"):  # a device that cannot run models is a failed device in a fleet summary
            missing = "; ".join(report.get("missing") or []) or report.get("error") or "not ready"
            raise EdgekitError(f"{device.name}: {missing}")
        return report

    outcomes = for_each_device(devices, one, parallel=parallel, label="doctor")
    return outcomes, record(fleet, "doctor", outcomes, started)


def bench_fleet(fleet: Fleet, devices: list[FleetDevice], variant: Path, settings, *, parallel: int
                ) -> tuple[list[DeviceOutcome], Path]:

    variants = collect_variants([model_path(variant)])
    settings.check()
    started = utc_now()

    def one(device: FleetDevice) -> dict:
        result = run_bench(variants, device.profile, settings)
        errors = [row.error for row in result.rows if row.status != "ok"]
        if errors:
            raise EdgekitError(errors[0] or "bench failed")
        return {"rows": result.rows, "device": result.device}

    outcomes = for_each_device(devices, one, parallel=parallel, label="bench")
    return outcomes, record(fleet, "bench", outcomes, started, {"variant": str(variant)})


def summary_table(outcomes: list[DeviceOutcome], columns: list[tuple[str, int, object]]) -> str:
    """Device, status, seconds and the given columns (title, width, function of the value); the last
    column is the error or detail and is cut so a line fits the terminal."""
    titles = ["device", "status", "secs"] + [title for title, _, _ in columns]
    widths = [16, 6, 6] + [width for _, width, _ in columns]
    detail = max(10, TERMINAL_WIDTH - sum(width + 2 for width in widths))
    lines = [fixed_line(titles, widths, "  ") + "  detail"]
    for outcome in outcomes:
        cells = [outcome.device, "ok" if outcome.ok else "FAILED", fmt(outcome.seconds, ".1f")]
        cells += [fmt(fn(outcome.value) if outcome.ok else None, "") for _, _, fn in columns]
        lines.append(f"{fixed_line(cells, widths, '  ')}  {clip(outcome.error or '', detail)}".rstrip())
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"{len(outcomes) - failed} ok, {failed} failed")
    return "\n".join(lines)


def outcomes_json(outcomes: list[DeviceOutcome]) -> list[dict]:
    return [{"device": o.device, "ok": o.ok, "seconds": o.seconds, "error": o.error, "result": _plain(o.value)}
            for o in outcomes]


def _plain(value):
    """JSON types only: a typed record (a bench row) as its own `as_dict()`, anything else unknown as text."""
    return json.loads(json.dumps(value, default=lambda o: o.as_dict() if hasattr(o, "as_dict") else str(o)))
