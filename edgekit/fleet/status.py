"""`edgekit fleet status`: what every device runs and how its model is doing in the field.

Status first pulls (incrementally) into the store, then computes every figure from the store, so a device
that does not answer still shows what was last known about it, marked. Figures are over a recent window
(`window_hours`, 24 h by default) of the rows of the model the device ran last:

- predictions per hour: rows in the window over the hours from the oldest of them to now;
- median top score, and the share below `LOW_CONFIDENCE` (0.6, the runner's default --save-below);
- correction rate: predictions in the window whose latest correction names another label;
- p90 latency: of the logged end-to-end milliseconds (preprocess + invoke + postprocess);
- drift: `edgekit.fleet.drift` against the reference in the model's variant manifest ("no reference" for
  variants made before it was stored, "n/a (N rows)" below `drift.MIN_ROWS`).
"""

from __future__ import annotations

import json
import shlex
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edgekit.artifacts import atomic_path, edgekit_home
from edgekit.device_state import read_current
from edgekit.errors import EdgekitError
from edgekit.fleet import drift as driftlib
from edgekit.fleet import services
from edgekit.fleet.parallel import for_each_device
from edgekit.fleet.pull import device_target, pull_device
from edgekit.fleet.store import Store
from edgekit.render import fixed_line, fmt

LOW_CONFIDENCE = 0.6
WINDOW_ROWS = 5000  # most recent rows a window looks at, whatever its hours


@dataclass
class DeviceStatus:
    device: str
    reachable: bool = True
    error: str | None = None
    model_sha256: str | None = None
    variant: str | None = None
    service: str = "unknown"
    last_seen: str | None = None
    rows: int = 0
    predictions_per_hour: float | None = None
    median_score: float | None = None
    low_confidence_share: float | None = None
    correction_rate: float | None = None
    p90_latency_ms: float | None = None
    disk_bytes: int | None = None
    wave: str | None = None
    drift: float | None = None
    drift_label: str = "n/a"
    drift_detail: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # (time, median score, drift) per chunk of rows, for the plot


def _parse(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def device_status(store: Store, device: str, *, window_hours: float = 24.0, now: datetime | None = None,
                  model_sha256: str | None = None) -> DeviceStatus:
    """Every figure of one device, from the store, for `model_sha256` (default: the model of its newest row)."""
    status = DeviceStatus(device)
    now = now or datetime.now(timezone.utc)
    latest = store.query("SELECT model_sha256, time FROM predictions WHERE device = ? ORDER BY time DESC LIMIT 1",
                         (device,))
    facts = store.query("SELECT disk FROM devices WHERE name = ?", (device,))
    if facts and facts[0][0]:
        disk = json.loads(facts[0][0])
        status.disk_bytes = sum(int(v.get("log_bytes", 0)) + int(v.get("sample_bytes", 0)) for v in disk.values())
    if not latest:
        status.model_sha256, status.drift_label = model_sha256, "n/a (0 rows)"
        return status
    status.last_seen = latest[0][1]
    status.model_sha256 = model_sha256 or latest[0][0]
    model = store.query("SELECT variant, drift_reference FROM models WHERE sha256 = ?", (status.model_sha256,))
    status.variant = model[0][0] if model else None
    since = (now - timedelta(hours=window_hours)).isoformat(timespec="milliseconds")
    rows = store.query("SELECT id, time, top_label, top_score, latency_ms FROM predictions WHERE device = ? AND "
                       "model_sha256 = ? AND time >= ? ORDER BY time DESC LIMIT ?",
                       (device, status.model_sha256, since, WINDOW_ROWS))
    status.rows = len(rows)
    if rows:
        span = (now - _parse(rows[-1][1])).total_seconds() / 3600  # from the oldest row to now: idle counts
        status.predictions_per_hour = round(len(rows) / max(span, 1 / 60), 1)
        scores = [r[3] for r in rows]
        status.median_score = round(statistics.median(scores), 4)
        status.low_confidence_share = round(sum(s < LOW_CONFIDENCE for s in scores) / len(scores), 4)
        latencies = [r[4] for r in rows if r[4] is not None]
        status.p90_latency_ms = round(percentile(latencies, 0.9), 2) if latencies else None
        status.correction_rate = round(_corrections(store, device, rows) / len(rows), 4)
    reference = driftlib.parse_reference(json.loads(model[0][1])) if model and model[0][1] else None
    if reference is None:
        status.drift_label = "no reference"
    elif len(rows) < driftlib.MIN_ROWS:
        status.drift_label = f"n/a ({len(rows)} rows)"
    else:
        status.drift_detail = driftlib.drift(reference, [r[3] for r in rows], [r[2] for r in rows])
        status.drift = status.drift_detail["drift"]
        status.drift_label = f"{status.drift:.2f} {status.drift_detail['verdict']}"
    status.history = _history(store, device, status.model_sha256, reference)
    return status


def _corrections(store: Store, device: str, rows: list) -> int:
    """Predictions among `rows` whose latest correction names another label than the model's answer."""
    predicted = {r[0]: r[2] for r in rows}
    latest: dict[str, str] = {}
    for prediction_id, label in store.query(
            "SELECT prediction_id, label FROM feedback WHERE device = ? AND time >= ? ORDER BY time, id",
            (device, min(r[1] for r in rows))):
        if prediction_id in predicted:
            latest[prediction_id] = label
    return sum(label != predicted[pid] for pid, label in latest.items())


def _history(store: Store, device: str, model_sha: str, reference) -> list:
    """(time, median score, drift or None) over consecutive chunks of the device's recent rows."""
    rows = store.query("SELECT time, top_label, top_score FROM predictions WHERE device = ? AND model_sha256 = ? "
                       "ORDER BY time DESC LIMIT ?", (device, model_sha, WINDOW_ROWS * 4))[::-1]
    size = max(driftlib.MIN_ROWS, len(rows) // 20)
    points = []
    for start in range(0, len(rows) - size + 1, size):
        chunk = rows[start:start + size]
        value = driftlib.drift(reference, [r[2] for r in chunk], [r[1] for r in chunk])["drift"] \
            if reference else None
        points.append((chunk[-1][0], round(statistics.median(r[2] for r in chunk), 4), value))
    return points


_WAVE_STATES = {"pending": "pend", "shadow": "shadow", "promoted": "ok", "rolled-back": "back", "failed": "fail"}


def rollout_waves(fleet_name: str) -> dict[str, str]:
    """Device -> "wave state" from the newest rollout manifest naming it, under
    $EDGEKIT_HOME/fleet/<fleet>/rollouts/*/manifest.json (format: edgekit.fleet.rollout); empty when no rollout
    ran. Read leniently: a manifest that does not parse only hides the column."""
    folder = edgekit_home() / "fleet" / fleet_name / "rollouts"
    found = sorted(folder.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    waves: dict[str, str] = {}
    for path in found:  # oldest first: a newer rollout overwrites
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            for name, entry in (raw.get("devices") or {}).items():
                state = _WAVE_STATES.get(str(entry.get("state")), str(entry.get("state"))[:6])
                waves[str(name)] = f"{str(entry.get('wave', '?'))[:7]} {state}"
        except (OSError, ValueError, AttributeError):
            continue
    return waves


def serving(target, device) -> tuple[str, object]:
    """(service state, current.json or None): systemd's `is-active` for a unit deploy installed, whether the
    pid of a process service (the fleet file's `service:`) is alive, else "none" (see fleet.services)."""

    try:
        current = read_current(target)
    except EdgekitError:
        current = None
    try:
        kind = services.service_of(device, current)
    except EdgekitError:
        return "none", current
    if kind.kind == "systemd":
        script = f"systemctl is-active {shlex.quote(kind.unit)}"
    else:
        script = f"[ -f {services.PID_FILE} ] && kill -0 $(cat {services.PID_FILE}) 2>/dev/null && echo running " \
                 "|| echo stopped"
    _, out, _ = target.run(["sh", "-c", script], timeout=30, what="check the service")
    return (out.decode("utf-8", "replace").split() or ["unknown"])[-1][:12], current


def as_json(status: DeviceStatus) -> dict:
    return asdict(status)


def plot(statuses: list[DeviceStatus], target: Path) -> Path:
    """status.png: drift (with the watch/drifting lines) and median top score per device over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for status in statuses:
        if not status.history:
            continue
        times = [_parse(t) for t, _, _ in status.history]
        drifts = [d if d is not None else float("nan") for _, _, d in status.history]
        top.plot(times, drifts, marker=".", label=status.device)
        bottom.plot(times, [m for _, m, _ in status.history], marker=".", label=status.device)
    top.axhline(driftlib.WATCH, color="orange", linestyle="--", linewidth=0.8)
    top.axhline(driftlib.DRIFTING, color="red", linestyle="--", linewidth=0.8)
    top.set_ylabel("drift (JS, bits)")
    bottom.set_ylabel("median top score")
    bottom.set_ylim(0, 1)
    top.set_title("field drift and confidence per device")
    if any(s.history for s in statuses):
        top.legend(fontsize=7, loc="upper left", ncol=4)
    fig.autofmt_xdate()
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return target


def _age(last_seen: str | None, now: datetime) -> str:
    if not last_seen:
        return "never"
    seconds = (now - _parse(last_seen)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


COLUMNS = (("device", 10), ("model", 13), ("service", 7), ("seen", 5), ("pred/h", 6), ("med", 4), ("low", 4),
           ("corr", 4), ("p90ms", 6), ("disk", 6), ("wave", 11), ("drift", 13))


def table(statuses: list[DeviceStatus], now: datetime | None = None) -> str:
    """The status table, at most 100 columns wide; long names are cut with '…'."""
    now = now or datetime.now(timezone.utc)
    widths = [width for _, width in COLUMNS]
    lines = [fixed_line([name for name, _ in COLUMNS], widths).rstrip()]
    for s in statuses:
        model = f"{s.model_sha256[:6]} {s.variant or '?'}" if s.model_sha256 else "-"  # sha first: never cut
        cells = [s.device, model, s.service if s.reachable else "unreach", _age(s.last_seen, now),
                 fmt(s.predictions_per_hour, "rate"), fmt(s.median_score), fmt(s.low_confidence_share, ".0%"),
                 fmt(s.correction_rate, ".0%"), fmt(s.p90_latency_ms, "ms"), fmt(s.disk_bytes, "size-short"),
                 s.wave or "—", s.drift_label]
        lines.append(fixed_line(cells, widths).rstrip())
    for s in statuses:
        if not s.reachable:
            lines.append(f"{s.device}: pull failed ({s.error}); figures are from the last pull")
    return "\n".join(lines)


@dataclass
class FleetStatus:
    devices: list[DeviceStatus]
    pulls: list  # DeviceOutcome of each device's pull (value: (PullResult, service state))
    png: Path | None


def fleet_status(fleet, devices: list, store: Store, *, parallel: int = 8, window_hours: float = 24.0,
                 out_dir: Path | None = None, progress=None) -> FleetStatus:
    """Pull every device (in parallel), ask systemd about its service, then compute and plot the figures."""

    def one(device):
        target = device_target(device)
        result = pull_device(device, store, target=target)
        return (result, *serving(target, device))

    outcomes = for_each_device(devices, one, parallel=parallel, label="status", progress=progress)
    waves = rollout_waves(fleet.name)
    statuses = []
    for device, outcome in zip(devices, outcomes):
        current = outcome.value[2] if outcome.ok else None
        status = device_status(store, device.name, window_hours=window_hours,
                               model_sha256=current.model_sha256 if current else None)
        if outcome.ok:
            status.service = outcome.value[1]
            status.variant = status.variant or (current.variant if current else None)
        else:
            status.reachable, status.error = False, outcome.error
        status.wave = waves.get(device.name)
        statuses.append(status)
    out_dir = Path(out_dir) if out_dir else edgekit_home() / "fleet" / fleet.name
    return FleetStatus(statuses, outcomes, plot(statuses, out_dir / "status.png"))
