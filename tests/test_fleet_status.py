"""`edgekit fleet pull` and `fleet status` over simulated devices: local work directories and two over the
loopback sshd, incremental reads, drift, and what a device may not do to the host."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from fleet_data import LABELS, MODEL_SHA, log_path, make_fleet  # noqa: E402

from edgekit.cli import app  # noqa: E402
from edgekit.fleet import simulate  # noqa: E402
from edgekit.fleet.drift import DRIFTING, WATCH  # noqa: E402

cli = CliRunner()


def invoke(*args):
    result = cli.invoke(app, [str(a) for a in args])
    return result, (json.loads(result.stdout) if "--json" in args and result.stdout.strip().startswith("{") else None)


def by_device(payload):
    return {d["device"]: d for d in payload["devices"]}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    import sshd_fixture

    yield from sshd_fixture.serve(tmp_path_factory)


def test_second_status_moves_only_the_new_rows(tmp_path):
    fleet = make_fleet(tmp_path, rows=300, sample_every=3, corrections_every=10)
    first, payload = invoke("fleet", "pull", fleet, "--json")
    assert first.exit_code == 0, first.output
    pulled = by_device(payload)
    assert pulled["a"]["new"]["predictions"] == 300 and pulled["a"]["new"]["feedback"] == 30
    simulate.add_rows(log_path(tmp_path, "a"), MODEL_SHA, LABELS, simulate.synthetic_answers(5, LABELS), seed=7,
                      sample_every=1)
    second, payload = invoke("fleet", "status", fleet, "--json")
    assert second.exit_code == 0, second.output
    from edgekit.fleet.store import open_store

    with open_store(None) as store:
        assert store.query("SELECT count(*) FROM predictions WHERE device = 'a'")[0][0] == 305
        assert store.query("SELECT count(*) FROM predictions WHERE device = 'b'")[0][0] == 300
    third, payload = invoke("fleet", "pull", fleet, "--json")
    quiet = by_device(payload)
    assert quiet["a"]["rows_read"] == 0 and quiet["b"]["rows_read"] == 0
    # bytes of a pull with nothing new: a fixed few hundred, not a share of the 300-row log
    assert quiet["a"]["bytes_moved"] < 1000 < pulled["a"]["bytes_moved"] / 50


def test_status_figures_table_and_plot(tmp_path):
    fleet = make_fleet(tmp_path, rows=300, corrections_every=10)
    result, payload = invoke("fleet", "status", fleet, "--json")
    assert result.exit_code == 0, result.output
    device = by_device(payload)["a"]
    assert device["model_sha256"] == MODEL_SHA and device["variant"] == "sim-int8"
    assert device["rows"] == 300 and device["service"] == "none" and device["wave"] is None
    assert device["predictions_per_hour"] == pytest.approx(360, rel=0.02)  # one row every 10 s
    assert 0.7 < device["median_score"] < 0.95 and device["correction_rate"] == pytest.approx(0.1)
    assert device["p90_latency_ms"] > 2 and device["disk_bytes"] > 0
    assert Path(payload["png"]).stat().st_size > 1000
    text, _ = invoke("fleet", "status", fleet)
    table = [line for line in text.stdout.splitlines() if not line.startswith("plot: ")]
    assert max(len(line) for line in table) <= 100, table
    assert table[0].split()[:3] == ["device", "model", "service"] and "—" in table[1]


def test_drift_is_near_zero_on_the_reference_and_high_when_the_field_shifts(tmp_path):
    fleet = make_fleet(tmp_path, local=("same", "shifted", "few"), rows=0)
    answers = {"same": simulate.synthetic_answers(400, LABELS, seed=1),
               "shifted": simulate.synthetic_answers(400, LABELS, seed=2, confidence=0.45, class_weights=[8, 1, 1]),
               "few": simulate.synthetic_answers(20, LABELS, seed=3)}
    for name, rows in answers.items():
        simulate.add_rows(log_path(tmp_path, name), MODEL_SHA, LABELS, rows)
    result, payload = invoke("fleet", "status", fleet, "--json")
    devices = by_device(payload)
    assert devices["same"]["drift"] < WATCH and devices["same"]["drift_label"].endswith("ok")
    assert devices["shifted"]["drift"] > DRIFTING and devices["shifted"]["drift_label"].endswith("drifting")
    assert devices["few"]["drift"] is None and devices["few"]["drift_label"] == "n/a (20 rows)"


def test_a_model_without_reference_shows_no_reference_not_zero(tmp_path):
    fleet = make_fleet(tmp_path, local=("old",), rows=200, with_reference=False)
    _, payload = invoke("fleet", "status", fleet, "--json")
    assert by_device(payload)["old"]["drift"] is None
    assert by_device(payload)["old"]["drift_label"] == "no reference"


def test_a_device_log_from_a_newer_edgekit_is_one_line_naming_the_device(tmp_path):
    fleet = make_fleet(tmp_path, rows=10)
    with sqlite3.connect(log_path(tmp_path, "a")) as db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    result, payload = invoke("fleet", "pull", fleet, "--json")
    assert result.exit_code == 1
    devices = by_device(payload)
    assert devices["b"]["ok"] and not devices["a"]["ok"]
    assert devices["a"]["error"] == (f"a: models/{MODEL_SHA[:12]}/edgekit_runner.db has schema_version 99, newer "
                                     "than this edgekit reads (2); upgrade edgekit on this machine")


def test_a_replaced_device_log_restarts_the_cursor(tmp_path):
    fleet = make_fleet(tmp_path, local=("a",), rows=50)
    invoke("fleet", "pull", fleet)
    db = log_path(tmp_path, "a")
    db.unlink()
    simulate.install(tmp_path / "devices" / "a", MODEL_SHA, LABELS)
    simulate.add_rows(db, MODEL_SHA, LABELS, simulate.synthetic_answers(7, LABELS))
    _, payload = invoke("fleet", "pull", fleet, "--json")
    assert by_device(payload)["a"]["new"]["predictions"] == 7


def test_paging_reads_every_row_across_round_trips(tmp_path):
    from edgekit.fleet.inventory import load_fleet
    from edgekit.fleet.pull import pull_device
    from edgekit.fleet.store import open_store

    fleet = load_fleet(make_fleet(tmp_path, local=("a",), rows=250, corrections_every=5))
    with open_store(None) as store:
        result = pull_device(fleet.select()[0], store, limit=100)
        assert result.round_trips == 3 and result.new["predictions"] == 250 and result.new["feedback"] == 50


def test_hostile_rows_are_rejected_and_nothing_lands_outside_the_store(tmp_path):
    fleet = make_fleet(tmp_path, local=("a",), rows=5, sample_every=1)
    with sqlite3.connect(log_path(tmp_path, "a")) as db:
        first, second = [r[0] for r in db.execute("SELECT id FROM predictions ORDER BY rowid LIMIT 2")]
        db.execute("UPDATE predictions SET image_path = '../../../escape.jpg' WHERE id = ?", (first,))
        db.execute("INSERT INTO feedback (prediction_id, label, time, source) VALUES (?, '../../x', "
                   "'2026-01-01T00:00:00+00:00', 'cli')", (second,))
    result, payload = invoke("fleet", "pull", fleet, "--json")
    device = by_device(payload)["a"]
    assert result.exit_code == 0 and device["rejected"] == 2 and device["new"]["predictions"] == 4
    assert not (tmp_path.parent / "escape.jpg").exists()


def test_pull_and_status_over_ssh_beside_a_local_device(sshd, tmp_path):
    fleet = make_fleet(tmp_path, local=("here",), ssh=("pi-1", "pi-2"), sshd=sshd, rows=120, sample_every=4)
    result, payload = invoke("fleet", "pull", fleet, "--parallel", "3", "--json")
    assert result.exit_code == 0, result.output
    devices = by_device(payload)
    assert all(devices[name]["new"]["predictions"] == 120 for name in ("here", "pi-1", "pi-2"))
    simulate.add_rows(log_path(tmp_path, "pi-2"), MODEL_SHA, LABELS, simulate.synthetic_answers(3, LABELS), seed=5)
    result, payload = invoke("fleet", "status", fleet, "--json")
    assert result.exit_code == 0, result.output
    devices = by_device(payload)
    assert devices["pi-2"]["rows"] == 123 and devices["pi-1"]["rows"] == 120 and devices["pi-1"]["reachable"]


def test_status_shows_the_rollout_wave_and_a_process_service(tmp_path, edgekit_home):
    import yaml

    fleet = make_fleet(tmp_path, rows=10)
    data = yaml.safe_load(fleet.read_text())
    data["devices"]["a"]["service"] = "live incoming --existing"  # a process service that is not running
    fleet.write_text(yaml.safe_dump(data))
    manifest = edgekit_home / "fleet" / "test-fleet" / "rollouts" / "r1" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"kind": "fleet-rollout",
                                    "devices": {"a": {"wave": "canary", "state": "promoted"}}}))
    _, payload = invoke("fleet", "status", fleet, "--json")
    devices = by_device(payload)
    assert devices["a"]["wave"] == "canary ok" and devices["b"]["wave"] is None
    assert devices["a"]["service"] == "stopped" and devices["b"]["service"] == "none"


def test_pull_into_a_shared_postgresql_store_is_incremental(tmp_path, postgres_url):
    from edgekit.fleet.store import open_store

    url = postgres_url
    fleet = make_fleet(tmp_path, rows=40, sample_every=2)
    _, first = invoke("fleet", "pull", fleet, "--store", url, "--json")
    simulate.add_rows(log_path(tmp_path, "b"), MODEL_SHA, LABELS, simulate.synthetic_answers(2, LABELS), seed=9)
    _, second = invoke("fleet", "status", fleet, "--store", url, "--json")
    assert [d["new"]["predictions"] for d in first["devices"]] == [40, 40]
    assert by_device(second)["b"]["rows"] == 42
    with open_store(url) as store:
        assert store.query("SELECT count(*) FROM predictions")[0][0] == 82
        assert store.query("SELECT count(*) FROM samples")[0][0] == 40  # 20 kept per device, in bytea


def test_a_device_whose_runner_predates_rows_or_is_missing_is_one_line(tmp_path):
    fleet = make_fleet(tmp_path, rows=3)
    (tmp_path / "devices" / "a" / "edgekit_runner.py").write_text(
        "import argparse\nparser = argparse.ArgumentParser()\nparser.add_subparsers().add_parser('classify')\n"
        "parser.parse_args()\n")
    (tmp_path / "devices" / "b" / "edgekit_runner.py").unlink()
    result, payload = invoke("fleet", "pull", fleet, "--json")
    devices = by_device(payload)
    assert result.exit_code == 1
    assert devices["a"]["error"] == ("a: `edgekit_runner.py rows` failed (the edgekit_runner.py on the device predates "
                                     "`rows`; update it with `edgekit fleet deploy` or `edgekit deploy`)")
    assert devices["b"]["error"].startswith("b: `edgekit_runner.py rows` failed (no edgekit_runner.py in ")


def test_status_keeps_the_last_figures_of_a_device_that_stopped_answering(tmp_path):
    fleet = make_fleet(tmp_path, rows=120)
    invoke("fleet", "pull", fleet)
    (tmp_path / "devices" / "b" / "edgekit_runner.py").unlink()
    result, payload = invoke("fleet", "status", fleet, "--json")
    assert result.exit_code == 0
    gone = by_device(payload)["b"]
    assert not gone["reachable"] and gone["rows"] == 120 and "no edgekit_runner.py" in gone["error"]
    text, _ = invoke("fleet", "status", fleet)
    assert "b: pull failed (" in text.stdout and " unreach " in text.stdout


def test_a_version_1_log_without_the_shadow_table_is_read(tmp_path):
    fleet = make_fleet(tmp_path, local=("old",), rows=12)
    with sqlite3.connect(log_path(tmp_path, "old")) as db:
        db.execute("DROP TABLE shadow")
        db.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
        db.execute("DELETE FROM meta WHERE key = 'db_id'")  # an old log: identified by its file instead
    result, payload = invoke("fleet", "pull", fleet, "--json")
    assert result.exit_code == 0 and by_device(payload)["old"]["new"]["predictions"] == 12
    _, payload = invoke("fleet", "pull", fleet, "--json")
    assert by_device(payload)["old"]["rows_read"] == 0


def test_two_pulls_of_one_device_at_once_store_each_row_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from edgekit.fleet.inventory import load_fleet
    from edgekit.fleet.pull import pull_device
    from edgekit.fleet.store import open_store

    device = load_fleet(make_fleet(tmp_path, local=("a",), rows=80, sample_every=2)).select()[0]
    with open_store(None) as store, ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: pull_device(device, store), range(2)))
        assert sum(r.new["predictions"] for r in results) == 80
        assert store.query("SELECT count(*) FROM predictions")[0][0] == 80
        assert store.query("SELECT count(*) FROM samples")[0][0] == 40  # one row each, though both fetched
