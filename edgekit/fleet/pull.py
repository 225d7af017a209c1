"""`edgekit fleet pull`: every device's new log rows and samples into the one field-data store.

Per device: ask the store for its cursors, read the rows after them (`fetch.read_new_rows`), fetch only
the samples the store lacks, and insert all of it in one transaction. Devices run in parallel
(`for_each_device`); one that fails is a failed line in the summary, never a stopped pull.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.artifacts import utc_now
from edgekit.fleet.fetch import ROWS_LIMIT, fetch_samples, read_new_rows
from edgekit.fleet.parallel import DeviceOutcome, for_each_device
from edgekit.fleet.store import Store
from edgekit.render import fmt
from edgekit.transport.targets import make_target


@dataclass
class PullResult:
    device: str
    new: dict = field(default_factory=dict)  # predictions, feedback, shadow, samples newly stored
    rows_read: int = 0
    bytes_moved: int = 0
    round_trips: int = 0
    rejected: int = 0
    samples_missing: int = 0
    notes: list[str] = field(default_factory=list)


def device_target(device):
    """The transport for a fleet device (the hook fleet-wide connection sharing plugs into)."""
    target = make_target(device.profile)
    target.prepare()
    return target


def pull_device(device, store: Store, *, limit: int = ROWS_LIMIT, target=None) -> PullResult:
    """Bring one device's new rows and samples into `store`; returns what moved and what was new."""
    target = target or device_target(device)
    read = read_new_rows(target, store.cursors(device.name), store.known_models(), limit)
    digests = {row["sample_sha256"] for log in read.batch.logs for row in log["predictions"] if row["sample_sha256"]}
    fetch_samples(target, read, store.missing_samples(digests), store.put_sample)
    read.batch.pulled_at = utc_now()
    new = store.ingest(read.batch)
    rows = sum(len(log[t]) for log in read.batch.logs for t in ("predictions", "feedback", "shadow"))
    return PullResult(device.name, new, rows, read.bytes_moved, read.round_trips, read.rejected,
                      read.samples_missing, read.notes)


def pull_fleet(devices: list, store: Store, *, parallel: int = 8, limit: int = ROWS_LIMIT,
               progress=None) -> list[DeviceOutcome]:
    """`pull_device` over every device, at most `parallel` at once; one outcome per device, in order."""
    return for_each_device(devices, lambda device: pull_device(device, store, limit=limit), parallel=parallel,
                           label="pull", progress=progress)


def summary_rows(outcomes: list[DeviceOutcome]) -> list[list]:
    """One table row per device: new rows, new samples, bytes moved, seconds, or the error."""
    rows = []
    for outcome in outcomes:
        if outcome.ok:
            result: PullResult = outcome.value
            rows.append([outcome.device, "ok", result.new.get("predictions", 0), result.new.get("feedback", 0),
                         result.new.get("samples", 0), result.bytes_moved, fmt(outcome.seconds, ".1f"),
                         "; ".join(result.notes[:1]) + (f" {result.rejected} rejected" if result.rejected else "")])
        else:
            rows.append([outcome.device, "FAILED", "", "", "", "", fmt(outcome.seconds, ".1f"), outcome.error])
    return rows


PULL_HEADERS = ["device", "state", "predictions", "feedback", "samples", "bytes", "seconds", "note"]
