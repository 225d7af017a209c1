"""The rollout manifest: one JSON file per rollout, the record `fleet rollout` keeps and `fleet status` reads.

Manifest: `$EDGEKIT_HOME/fleet/<fleet>/rollouts/<id>/manifest.json`, rewritten atomically after every
step so a killed host can `--resume` (continue the wave in flight) or `--resume --abort` (roll it back)::

    {"kind": "fleet-rollout", "schema": 1, "id": "20261203-064000-3f2a0c9e",
     "fleet": "plant-a", "fleet_file": "/abs/fleet.yaml", "who": "ana@laptop",
     "created": "...", "updated": "...",
     "variant": {"path": "/abs/model.tflite", "name": "mnv2-int8", "sha256": "3f2a..."},
     "settings": {"waves": ["canary", "all"], "shadow_s": 1800, "min_agreement": 0.97, "max_errors": 0,
                  "max_p90_ms": null, "min_samples": 1, "settle_s": 10},
     "state": "running" | "done" | "rolled-back" | "aborted",
     "reason": null | "one line: why the rollout stopped",
     "waves": [{"name": "canary", "devices": ["cam-1"], "state": "pending|shadow|promoted|rolled-back|failed"}],
     "devices": {"cam-1": {"wave": "canary", "state": "pending|shadow|promoted|rolled-back|failed",
                           "before": {current.json as it was} | null, "candidate": "models/<sha12>/model.tflite",
                           "gate": {"rows", "agreement", "errors", "p90_ms", "score_shift", "passed", "reason"},
                           "shadow_started": "...", "error": null | "one line", "updated": "..."}},
     "events": [{"time", "device", "step", "detail"}]}

A device's state is what it serves: `pending` (untouched), `shadow` (old model serving, candidate in
shadow), `promoted` (candidate serving), `rolled-back` (old model serving again), `failed` (unreachable or
broken; what it serves is unknown). `fleet status` reads this to show each device's wave.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.fleet.inventory import Fleet
from edgekit.fleet.ops import fleet_dir
from edgekit.render import TERMINAL_WIDTH, clip, fixed_line, fmt

KIND = "fleet-rollout"
SCHEMA = 1
STATES = ("pending", "shadow", "promoted", "rolled-back", "failed")


def rollouts_dir(fleet: Fleet) -> Path:
    return fleet_dir(fleet) / "rollouts"


def read_manifest(path: Path) -> dict:
    """One rollout manifest, checked for its kind and schema (one line naming the file otherwise)."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EdgekitError(f"{path}: cannot read the rollout manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND or manifest.get("schema") != SCHEMA:
        raise EdgekitError(f"{path}: not a schema {SCHEMA} rollout manifest")
    return manifest


def device_waves(fleet: Fleet) -> dict[str, dict]:
    """For each device, where the newest rollout that included it left it: {rollout, state (of the
    rollout), wave, device_state, variant_sha256, updated}. For `fleet status`."""
    found: dict[str, dict] = {}
    for path in sorted(rollouts_dir(fleet).glob("*/manifest.json")):  # ids sort by time: newest wins
        manifest = read_manifest(path)
        for name, entry in manifest["devices"].items():
            found[name] = {"rollout": manifest["id"], "state": manifest["state"], "wave": entry["wave"],
                           "device_state": entry["state"], "variant_sha256": manifest["variant"]["sha256"],
                           "updated": entry.get("updated")}
    return found


def summary_rows(manifest: dict) -> list[dict]:
    rows = []
    for name, entry in manifest["devices"].items():
        gate = entry.get("gate") or {}
        rows.append({"device": name, "wave": entry["wave"], "state": entry["state"],
                     "agreement": gate.get("agreement"), "rows": gate.get("rows"), "errors": gate.get("errors"),
                     "p90_ms": gate.get("p90_ms"), "detail": entry.get("error") or gate.get("reason") or ""})
    return rows


SUMMARY_COLUMNS = (("device", 16), ("wave", 10), ("state", 11), ("agree", 6), ("rows", 5), ("errs", 4), ("p90 ms", 7))


def summary_text(manifest: dict) -> str:
    widths, right = [width for _, width in SUMMARY_COLUMNS], range(3, len(SUMMARY_COLUMNS))
    lines = [fixed_line([title for title, _ in SUMMARY_COLUMNS], widths, "  ", right) + "  detail"]
    for row in summary_rows(manifest):
        line = fixed_line([row["device"], row["wave"], row["state"], fmt(row["agreement"], ".3f"),
                           fmt(row["rows"], "d"), fmt(row["errors"], "d"), fmt(row["p90_ms"], "ms")],
                          widths, "  ", right) + "  "
        lines.append((line + clip(row["detail"], max(1, TERMINAL_WIDTH - len(line)))).rstrip())
    lines.append(f"rollout {manifest['id']}: {manifest['state']}" + (f": {manifest['reason']}" if manifest["reason"]
                                                                      else ""))
    return "\n".join(lines)
