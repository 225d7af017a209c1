"""A bench row and `results.json` as types: what ran where, how fast, how accurate, and whether edgekit stands
behind the figures.

A row used to be a dict that four modules filled in place, so a renamed key failed in whichever reader met
it first, and `results.json` carried no version. Now a row is built once, changed with `dataclasses.replace`,
filled from the runner's JSON in one place (`measured`), and `results.json` is written and read only here
(`read_results`): a damaged, foreign or newer file is one line naming the file and the field.

In the JSON a row stays flat, as before: the fields of `ran` (device, runtime, delegate, threads) sit beside
`variant`, so the CSV columns, `--json` readers and old files keep their keys.

Schema history: version 1 (before `schema_version`) is read and upgraded in memory: its rows carried a
redundant top-level `n`, an empty `latency_ms` where nothing was timed, and some very old ones the status
`suspect` (today's `drift`). What is written is always the current version.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgekit.artifacts import write_json_atomic
from edgekit.bench.paired import ratio_interval
from edgekit.config import from_mapping
from edgekit.errors import EdgekitError

RESULTS_SCHEMA_VERSION = 2

# ok: edgekit stands behind the row's figures. drift: the device's outputs differ from LiteRT on the host
# beyond tolerance, so the host's accuracy does not describe this device. error: nothing (or not all) was
# measured; `error` says why. A reader decides on this, never on the wording of `error`.
Status = Literal["ok", "drift", "error"]
Verdict = Literal["slower", "faster", "no measurable difference", "unknown"]


@dataclass(frozen=True)
class Placement:
    """What ran where: the device, the runtime and version that really ran, the delegate and the threads."""

    device: str
    delegate: str = "none"
    threads: int | None = None  # effective: capped at the cores the runner may use
    threads_requested: int | None = None
    threads_capped: bool = False
    runtime: str | None = None  # None: the runner never reported (an error row)
    runtime_version: str | None = None


@dataclass(frozen=True)
class LatencyStats:
    """Invoke latency in milliseconds over the timed runs (warm-up excluded)."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    std: float | None = None


@dataclass(frozen=True)
class OutputCheck:
    """Device outputs against LiteRT on the host (`accuracy.compare`); `checked` 0: nothing was compared."""

    checked: int = 0
    max_abs_diff: float | None = None
    top1_flips: int | None = None
    argmax_equal: bool | None = None
    unit: Literal["quantization steps", "absolute"] | None = None
    max_steps: float | None = None
    mean_steps: float | None = None
    tolerance: float | None = None
    equal: bool | None = None


@dataclass(frozen=True)
class DeviceAccuracy:
    """The validation split run on the device and on the host (`accuracy.device_accuracy`)."""

    samples: int
    split: str
    host_accuracy: float
    device_accuracy: float
    device_runtime: str
    output_check: OutputCheck


@dataclass(frozen=True)
class DeviceEnvironment:
    """The device as its own runner saw it: what the row's latency was measured with."""

    python: str | None = None
    numpy: str | None = None
    machine: str | None = None
    os: str | None = None
    kernel: str | None = None
    cpu_model: str | None = None
    cpu_count: int | None = None
    usable_cores: int | None = None
    memory_total_mb: int | None = None
    hostname: str | None = None
    runtime: str | None = None
    runtime_version: str | None = None


@dataclass(frozen=True)
class Paired:
    """Interleaved rounds of this model against the float32 baseline (`bench.paired`)."""

    baseline: str
    ratio: float
    ci95: tuple[float, ...]
    rounds: int
    baseline_sha256: str | None = None
    per_round: int | None = None
    rounds_ms: tuple[tuple[float, ...], ...] = ()

    def interval(self) -> dict:
        """The shape `bench.paired.verdict` takes."""
        return {"ratio": self.ratio, "ci95": list(self.ci95), "rounds": self.rounds}


@dataclass(frozen=True)
class VsFloat32:
    """How this row compares with the float32 row of its group: the point p50 ratio and the paired verdict."""

    p50_ratio: float
    verdict: Verdict
    ratio: float | None = None
    ci95: tuple[float, ...] | None = None
    rounds: int | None = None


@dataclass(frozen=True)
class BenchRow:
    """One variant timed on one device with one delegate and thread count."""

    variant: str
    path: str
    ran: Placement
    size: int
    mode: str | None = None  # float32, float16, dynamic, int8; None: a model edgekit did not make
    accuracy: float | None = None  # the host's, from the variant manifest
    accuracy_source: str = "not measured"
    device_accuracy: float | None = None
    status: Status = "ok"
    error: str | None = None  # why the row is not ok
    inputs: str | None = None  # what the model was fed
    latency_ms: LatencyStats | None = None
    throughput_ips: float | None = None
    peak_rss_mb: float | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    model_sha256: str | None = None  # as the device hashed it
    output_check: OutputCheck | None = None
    environment: DeviceEnvironment | None = None
    paired: Paired | None = None
    accuracy_check: DeviceAccuracy | None = None
    warning: str | None = None  # the p50 is far from the profile's reference latency
    bench_wall_s: float | None = None
    # set by `bench.advice.advise`
    pareto: bool | None = None  # None: not ranked (no accuracy, or not ok)
    vs_float32: VsFloat32 | None = None
    slower_than_float32: float | None = None
    recommended: bool = False

    def as_dict(self) -> dict:
        """The row as results.json and `--json` hold it: flat, `ran`'s fields beside the variant."""
        record = dataclasses.asdict(self)
        ran = record.pop("ran")
        head = {"variant": record.pop("variant"), "path": record.pop("path")}
        return json.loads(json.dumps({**head, **ran, **record}))  # tuples as lists, as read back

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> BenchRow:
        """A row from its flat JSON form; anything wrong is one line starting with `where`."""
        if not isinstance(raw, dict):
            raise EdgekitError(f"{where}: expected a mapping of fields, got {str(raw)[:80]}")
        placed = [f.name for f in dataclasses.fields(Placement)]
        known = [f.name for f in dataclasses.fields(cls)]
        known = known[:2] + placed + known[3:]  # as the JSON has them: `ran`'s fields in its place
        unknown = sorted(str(key) for key in raw if key not in known)
        if unknown:
            raise EdgekitError(f"{where}: unknown field {unknown[0]!r}; known fields: {', '.join(known)}")
        ran = from_mapping(Placement, {k: v for k, v in raw.items() if k in placed}, where)
        rest = {k: v for k, v in raw.items() if k not in placed}
        return from_mapping(cls, {**rest, "ran": dataclasses.asdict(ran)}, where)


def device_environment(report: dict, where: str) -> DeviceEnvironment:
    """The `device` and `runtime` parts of a runner report."""
    device, runtime = _part(report, "device"), _part(report, "runtime")
    names = [f.name for f in dataclasses.fields(DeviceEnvironment)]
    values = {**{k: device.get(k) for k in names}, "runtime": runtime.get("name"),
              "runtime_version": runtime.get("version")}
    return from_mapping(DeviceEnvironment, values, f"{where}: field 'device'")


def _part(report: dict, key: str) -> dict:
    value = report.get(key)
    return value if isinstance(value, dict) else {}


def measured(row: BenchRow, report: dict, check: dict, where: str, baseline: str | None = None) -> BenchRow:
    """`row` with what the runner's `bench` JSON reports: the one place the runner's output becomes a row.

    The report comes from a device, so it is validated like any input: a wrong type is one line
    (`where`: field ...), which the caller turns into an error row. A delegate that did not load makes the
    row an error although the CPU timed it: those figures are not the ones asked for.
    """
    runtime = _part(report, "runtime")
    flat = {**row.as_dict(), "runtime": runtime.get("name"), "runtime_version": runtime.get("version"),
            "threads": report.get("threads", row.ran.threads), "threads_capped": report.get("threads_capped", False),
            "latency_ms": report.get("latency_ms") or None, "throughput_ips": report.get("throughput_ips"),
            "peak_rss_mb": report.get("peak_rss_mb"), "load_ms": report.get("load_ms"),
            "first_ms": report.get("first_ms"), "model_sha256": report.get("model_sha256"),
            "output_check": check, "environment": dataclasses.asdict(device_environment(report, where)),
            "paired": _paired(report, baseline, where)}
    if report.get("delegate_error"):
        flat.update(status="error", error=str(report["delegate_error"]))
    return BenchRow.from_dict(flat, where)


def _paired(report: dict, baseline: str | None, where: str) -> dict | None:
    """The runner's interleaved rounds against the baseline, as a ratio with its interval."""
    versus = _part(report, "versus")
    if not versus or baseline is None:
        return None
    rounds = versus.get("rounds_ms") or []
    if not isinstance(rounds, list) or not all(isinstance(r, list) and len(r) == 2 for r in rounds):
        raise EdgekitError(f"{where}: field 'versus': 'rounds_ms' is not a list of pairs")
    interval = ratio_interval(rounds)
    if interval is None:
        return None
    return {"baseline": baseline, "baseline_sha256": versus.get("model_sha256"), "per_round": versus.get("per_round"),
            "rounds_ms": rounds, **interval}


@dataclass(frozen=True)
class BenchResults:
    """`results.json`: the rows with the device, the settings, the host's environment and the advice."""

    device: str
    rows: tuple[BenchRow, ...] = ()
    schema_version: int = RESULTS_SCHEMA_VERSION
    created: str = ""
    partial: bool = False
    settings: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    advice: dict | None = None

    def as_dict(self) -> dict:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        head = {"schema_version": RESULTS_SCHEMA_VERSION}
        return {**head, **{k: v for k, v in record.items() if k not in ("schema_version", "rows")},
                "rows": [row.as_dict() for row in self.rows]}


def write_results_json(path: Path, results: BenchResults) -> None:
    write_json_atomic(path, results.as_dict())


def _upgrade_row(raw: Any) -> Any:
    """A version-1 row in the current shape (in memory only)."""
    if not isinstance(raw, dict):
        return raw
    raw = {k: v for k, v in raw.items() if k != "n"}  # the same figure as latency_ms.n
    if raw.get("latency_ms") == {}:
        raw["latency_ms"] = None
    if raw.get("status") == "suspect":
        raw["status"] = "drift"
    return raw


def results_from_dict(raw: Any, where: str) -> BenchResults:
    """Build `BenchResults` from parsed JSON; every problem is one line starting with `where`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("rows"), list):
        raise EdgekitError(f"{where}: not an edgekit bench results.json (no 'rows' list); was it written by "
                           "another tool?")
    version = raw.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise EdgekitError(f"{where}: field 'schema_version' must be a whole number, got {version!r}")
    if version > RESULTS_SCHEMA_VERSION:
        raise EdgekitError(f"{where}: schema version {version} is newer than this edgekit understands "
                           f"({RESULTS_SCHEMA_VERSION}); upgrade edgekit")
    rows = raw["rows"] if version > 1 else [_upgrade_row(r) for r in raw["rows"]]
    typed = tuple(BenchRow.from_dict(row, f"{where}: rows[{i}]") for i, row in enumerate(rows))
    fields = {k: v for k, v in raw.items() if k not in ("rows", "schema_version")}
    results = from_mapping(BenchResults, fields, where)
    return dataclasses.replace(results, rows=typed)


def read_results(path: Path) -> BenchResults:
    """`results.json` by path: missing, damaged, foreign or newer is one line naming the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"{path}: not a readable bench results.json ({exc})") from None
    return results_from_dict(raw, str(path))
