"""usage: python benchmarks/fleet_scale.py [--quick] [--devices 1,10,50] [--rows 20000] [--new-rows 100]
                                        [--parallel 16] [--out FILE.json]

`edgekit fleet pull` and `fleet status` over 1, 10 and 50 simulated devices, all reached over SSH through one
loopback sshd (EDGEKIT_TEST_SSHD_* from `.ci/start-sshd` when set, else one started here and stopped at the
end), each device over its own shared (ControlMaster) connection. Every device's runner runs on this
machine, so on few cores the figure includes 50 runner start-ups competing for the CPU, which a real
fleet spreads over 50 boards. Each device is its own work directory with a runner log pre-filled with
--rows predictions (a kept sample every 20th row, a correction every 50th), laid out as `edgekit deploy`
leaves it. Per fleet size:

- first pull: everything into a fresh SQLite store (the one-off cost);
- status: --new-rows new rows on every device, then `fleet status` (incremental pull, figures, status.png);
- bytes: what that incremental status moved per device, beside the device log's size and the bytes of the
  same new rows on a device whose log is 4x larger (goal: bytes follow the new rows, not the log);
- wall time of each against the one-device fleet, with --parallel 16 (goal: 50 devices <= 3x one).

Prints a table; writes JSON (default benchmarks/results/fleet_scale[_quick].json) with the environment.
--quick: 1 and 3 devices, 500 rows, 20 new: a check that the script runs, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, print_table, save_result

from edgekit.fleet import simulate

LABELS = ["cat", "dog", "bird", "fish"]
MODEL_SHA = "5e" * 32


@contextlib.contextmanager
def loopback_sshd():
    """(host, port, user, identity, known_hosts) of the advertised sshd, or of one started for this run."""
    keys = ("HOST", "PORT", "USER", "IDENTITY", "KNOWN_HOSTS")
    if os.environ.get("EDGEKIT_TEST_SSHD_PORT"):
        yield {k: os.environ[f"EDGEKIT_TEST_SSHD_{k}"] for k in keys}
        return
    directory = Path(tempfile.mkdtemp(prefix="fleet-scale-sshd-"))
    script = ROOT / ".ci" / "start-sshd"
    subprocess.run(["bash", str(script), str(directory)], check=True, stdout=subprocess.DEVNULL)
    env = dict(line.removeprefix("export ").split("=", 1) for line in (directory / "env").read_text().split("\n")
               if line.startswith("export "))
    try:
        yield {k: env[f"EDGEKIT_TEST_SSHD_{k}"].strip("'\"") for k in keys}
    finally:
        subprocess.run(["bash", str(script), "--stop", str(directory)], check=False)


def make_devices(root: Path, count: int, rows: int, sshd: dict) -> Path:
    import yaml

    devices = {}
    for index in range(count):
        name = f"dev-{index:03d}"
        workdir = root / "devices" / name
        db = simulate.install(workdir, MODEL_SHA, LABELS, variant="bench")
        simulate.add_rows(db, MODEL_SHA, LABELS, simulate.synthetic_answers(rows, LABELS, seed=index), seed=index,
                          step_s=2.0, sample_every=20, corrections_every=50)
        devices[name] = {"arch": "any", "connection": "ssh", "host": sshd["HOST"], "port": int(sshd["PORT"]),
                         "user": sshd["USER"], "identity_file": sshd["IDENTITY"],
                         "known_hosts_file": sshd["KNOWN_HOSTS"], "workdir": str(workdir), "python": sys.executable,
                         # a distinct option gives each device its own ControlMaster connection, as distinct
                         # hosts would have; otherwise all would share one connection to the one sshd
                         "ssh_options": {"ServerAliveInterval": 60 + index}}
    path = root / "fleet.yaml"
    path.write_text(yaml.safe_dump({"name": f"bench-{count}", "devices": devices}))
    return path


def add_new_rows(root: Path, count: int, new_rows: int, seed: int) -> None:
    for index in range(count):
        db = simulate.model_dir(root / "devices" / f"dev-{index:03d}", MODEL_SHA) / "edgekit_runner.db"
        simulate.add_rows(db, MODEL_SHA, LABELS, simulate.synthetic_answers(new_rows, LABELS, seed=seed + index),
                          seed=seed + index, step_s=1.0, sample_every=20)


def measure(count: int, args, sshd: dict, work: Path) -> dict:
    from edgekit.fleet.inventory import load_fleet
    from edgekit.fleet.pull import pull_fleet
    from edgekit.fleet.status import fleet_status
    from edgekit.fleet.store import open_store

    root = work / f"fleet-{count}"
    os.environ["EDGEKIT_HOME"] = str(root / "home")
    fleet = load_fleet(make_devices(root, count, args.rows, sshd))
    devices = fleet.select()
    quiet = io.StringIO()
    with open_store(None) as store:
        started = time.perf_counter()
        first = pull_fleet(devices, store, parallel=args.parallel, progress=quiet)
        first_s = time.perf_counter() - started
        add_new_rows(root, count, args.new_rows, seed=1000)
        started = time.perf_counter()
        status = fleet_status(fleet, devices, store, parallel=args.parallel, progress=quiet)
        status_s = time.perf_counter() - started
    failed = [o.error for o in [*first, *status.pulls] if not o.ok]
    moved = [o.value[0].bytes_moved for o in status.pulls if o.ok]
    log_bytes = [sum(d.disk_bytes or 0 for d in status.devices) / max(1, len(status.devices))]
    return {"devices": count, "rows_per_device": args.rows, "new_rows": args.new_rows,
            "first_pull_s": round(first_s, 2), "status_s": round(status_s, 2),
            "status_bytes_per_device": round(sum(moved) / max(1, len(moved))),
            "log_and_samples_bytes_per_device": round(log_bytes[0]),
            "errors": failed[:3]}


def bytes_against_log_size(args, sshd: dict, work: Path) -> dict:
    """The same new rows on a device with a 4x larger log: what an incremental status moves should not change."""
    from edgekit.fleet.inventory import load_fleet
    from edgekit.fleet.pull import pull_fleet
    from edgekit.fleet.store import open_store

    out = {}
    for factor in (1, 4):
        root = work / f"size-{factor}"
        os.environ["EDGEKIT_HOME"] = str(root / "home")
        fleet = load_fleet(make_devices(root, 1, args.rows * factor, sshd))
        with open_store(None) as store:
            pull_fleet(fleet.select(), store, parallel=1, progress=io.StringIO())
            add_new_rows(root, 1, args.new_rows, seed=2000)
            outcome = pull_fleet(fleet.select(), store, parallel=1, progress=io.StringIO())[0]
        out[f"rows_{args.rows * factor}"] = outcome.value.bytes_moved if outcome.ok else outcome.error
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", default=None, help="fleet sizes (1,10,50)")
    parser.add_argument("--rows", type=int, default=None, help="rows per device log (20000)")
    parser.add_argument("--new-rows", type=int, default=None, help="rows added before the status (100)")
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(n) for n in (args.devices or ("1,3" if args.quick else "1,10,50")).split(",")]
    args.rows = args.rows or (500 if args.quick else 20000)
    args.new_rows = args.new_rows or (20 if args.quick else 100)
    out = args.out or RESULTS / f"fleet_scale{'_quick' if args.quick else ''}.json"
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as scratch, loopback_sshd() as sshd:
        work = Path(scratch)
        rows = [measure(count, args, sshd, work) for count in sizes]
        base = rows[0]
        for row in rows:
            row["first_pull_vs_one"] = round(row["first_pull_s"] / base["first_pull_s"], 2)
            row["status_vs_one"] = round(row["status_s"] / base["status_s"], 2)
        sizes_bytes = bytes_against_log_size(args, sshd, work)
    print_table(rows, ["devices", "rows_per_device", "first_pull_s", "first_pull_vs_one", "status_s", "status_vs_one",
                       "status_bytes_per_device", "log_and_samples_bytes_per_device"])
    print(f"incremental pull of {args.new_rows} new rows, bytes moved by log size: {sizes_bytes}")
    for row in rows:
        if row["errors"]:
            print(f"{row['devices']} devices: errors {row['errors']}", file=sys.stderr)
    save_result(out, {"benchmark": "fleet_scale", "environment": environment(load_start),
                      "settings": {"parallel": args.parallel, "rows": args.rows, "new_rows": args.new_rows,
                                   "quick": args.quick},
                      "rows": rows, "bytes_by_log_size": sizes_bytes}, load_start)


def environment(load_start: tuple) -> dict:
    import platform

    from edgekit.bench.report import cpu_model

    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "platform": platform.platform(), "openssh": (ssh.stderr or ssh.stdout).strip(),
            "store": "sqlite", "load_average_start": list(load_start), "load_average_end": list(os.getloadavg())}


if __name__ == "__main__":
    main()
