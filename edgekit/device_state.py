"""Which model a device serves: `<workdir>/current.json`, the one answer to "what runs where".

`edgekit deploy` writes it after a model is copied and loads; `edgekit fleet rollout` rewrites it when a
wave is promoted or rolled back. It is replaced atomically (a `.part` file renamed, as every copy is),
so a reader sees the old or the new state, never half of one. Format (schema 1)::

    {"schema": 1,
     "model": "models/3f2a0c9e5b7d/model.tflite",   # relative to the work directory
     "model_sha256": "3f2a...", "variant": "mnv2-int8" | null,
     "previous": {"model": ..., "model_sha256": ..., "variant": ...} | null,  # kept for rollback
     "service": {"unit": "edgekit-serve.service", ...} | null,  # what deploy --service installed
     "updated": "2026-12-03T06:40:00Z", "by": "deploy" | "rollout <id>"}

The runner's prediction log for the model is `models/<sha12>/edgekit_runner.db` beside it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgekit.errors import EdgekitError

CURRENT = "current.json"
STATE_SCHEMA = 1


@dataclass(frozen=True)
class ModelRef:
    model: str  # relative to the device's work directory
    model_sha256: str
    variant: str | None = None


@dataclass(frozen=True)
class CurrentModel:
    model: str
    model_sha256: str
    variant: str | None = None
    previous: ModelRef | None = None
    service: dict | None = None
    updated: str = ""
    by: str = "deploy"

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.model, self.model_sha256, self.variant)

    @property
    def db(self) -> str:
        """The serving model's prediction log, relative to the work directory."""
        return str(Path(self.model).parent / "edgekit_runner.db")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_current(text: str, where: str) -> CurrentModel:
    """current.json from a device is a stranger's data: checked, and its paths kept inside the workdir."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise ValueError(f"schema {data.get('schema') if isinstance(data, dict) else '?'}, expected "
                             f"{STATE_SCHEMA}")
        previous = data.get("previous")
        state = CurrentModel(
            model=str(data["model"]), model_sha256=str(data["model_sha256"]), variant=data.get("variant"),
            previous=ModelRef(str(previous["model"]), str(previous["model_sha256"]), previous.get("variant"))
            if previous else None,
            service=data.get("service"), updated=str(data.get("updated", "")), by=str(data.get("by", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EdgekitError(f"{where}: not a valid {CURRENT} ({exc}); redeploy with `edgekit deploy`") from None
    for ref in (state.ref, state.previous):
        if ref and (ref.model.startswith("/") or ".." in Path(ref.model).parts or not ref.model.startswith("models/")):
            raise EdgekitError(f"{where}: model path {ref.model!r} is outside models/; redeploy with `edgekit deploy`")
    return state


def read_current(target) -> CurrentModel | None:
    """The device's current model, or None when nothing was deployed there with a current edgekit."""
    code, out, _ = target.run(["cat", CURRENT], timeout=30, what=f"read {CURRENT}")
    if code != 0:
        return None
    return parse_current(out.decode("utf-8", "replace"), f"{target.name}:{target.path(CURRENT)}")


def write_current(target, state: CurrentModel) -> CurrentModel:
    """Replace the device's current.json atomically (the transport copies to .part and renames)."""
    state = CurrentModel(**{**asdict(state), "previous": state.previous, "updated": utc_now()})
    data = {"schema": STATE_SCHEMA, **asdict(state)}
    with tempfile.TemporaryDirectory(prefix="edgekit-state-") as scratch:
        local = Path(scratch) / CURRENT
        local.write_text(json.dumps(data, indent=2) + "\n")
        target.put(local, CURRENT)
    return state
