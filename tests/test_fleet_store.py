"""The field-data store: SQLite and PostgreSQL, one transaction per pull, samples stored once."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.errors import EdgekitError
from edgekit.fleet.store import Batch, open_store

SHA = "cd" * 32


def _batch(device: str, ids: range, sample: bytes | None = b"same bytes") -> Batch:
    import hashlib

    digest = hashlib.sha256(sample).hexdigest() if sample else None
    predictions = [{"id": f"p{i}", "time": f"2026-01-01T00:00:{i:02d}+00:00", "model_sha256": SHA, "source": "sim",
                    "top_label": "cat", "top_score": 0.5, "top_k": "[]", "latency_ms": 3.0,
                    "sample_sha256": digest} for i in ids]
    log = {"path": "models/x/edgekit_runner.db", "db_id": "db1", "predictions": predictions, "feedback": [],
           "shadow": [], "cursor": {"predictions": ids.stop - 1, "feedback": 0, "shadow": 0}}
    return Batch(device, [log], [{"sha256": SHA, "labels": ["cat", "dog"], "variant": "v"}],
                 {digest: "jpg"} if sample else {}, 0, {}, "1", "2026-01-01T00:00:00+00:00")


def _pull(store, device: str, ids: range, sample: bytes | None = b"same bytes") -> dict:
    """What `pull_device` does with a device's reply: samples as they arrive, then the rows in one go."""
    batch = _batch(device, ids, sample)
    for digest in batch.samples:
        batch.new_samples += store.put_sample(digest, "jpg", sample)
    return store.ingest(batch)


def _stores(tmp_path, postgres_url: str | None = None):
    """An SQLite store, then (when the test server runs) a PostgreSQL one in the test's own database."""
    yield open_store(str(tmp_path / "store.db"))
    if postgres_url:
        yield open_store(postgres_url)


@pytest.fixture
def optional_postgres_url(request) -> str | None:
    """The test's own PostgreSQL database, or None where no server runs (SQLite is tested either way)."""
    return request.getfixturevalue("postgres_url") if os.environ.get("EDGEKIT_TEST_POSTGRES_URL") else None


def test_duplicate_sample_bytes_are_stored_once_and_rows_keep_device_model_and_time(tmp_path, optional_postgres_url):
    for store in _stores(tmp_path, optional_postgres_url):
        with store:
            assert _pull(store, "a", range(1, 4))["samples"] == 1
            counts = _pull(store, "b", range(1, 3))
            assert counts == {"predictions": 2, "feedback": 0, "shadow": 0, "samples": 0}
            assert store.query("SELECT count(*) FROM samples")[0][0] == 1
            assert store.query("SELECT count(*) FROM predictions")[0][0] == 5
            assert store.query("SELECT device, model_sha256, time FROM predictions WHERE id = 'p2' ORDER BY device") \
                == [("a", SHA, "2026-01-01T00:00:02+00:00"), ("b", SHA, "2026-01-01T00:00:02+00:00")]
            assert store.sample_bytes(_batch("a", range(1, 2)).logs[0]["predictions"][0]["sample_sha256"])[1] \
                == b"same bytes"
            assert store.cursors("a")["models/x/edgekit_runner.db"]["predictions"] == 3


def test_sqlite_samples_are_files_named_by_content(tmp_path):
    with open_store(str(tmp_path / "store.db")) as store:
        _pull(store, "a", range(1, 2), sample=b"\xff\xd8 jpeg")
    files = list((tmp_path / "samples").rglob("*.jpg"))
    assert len(files) == 1 and files[0].read_bytes() == b"\xff\xd8 jpeg"


def test_a_failing_pull_writes_nothing_and_keeps_the_cursor(tmp_path, optional_postgres_url):
    for store in _stores(tmp_path, optional_postgres_url):
        with store:
            _pull(store, "a", range(1, 3))
            bad = _batch("a", range(3, 6))
            bad.logs[0]["predictions"][1]["time"] = None  # NOT NULL: fails half-way through the inserts
            with pytest.raises(EdgekitError):
                store.ingest(bad)
            assert store.query("SELECT count(*) FROM predictions")[0][0] == 2
            assert store.cursors("a")["models/x/edgekit_runner.db"]["predictions"] == 2


def test_unreachable_postgresql_store_is_one_line_without_the_password(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("devices:\n  a: {connection: local, workdir: ./a}\n")
    result = CliRunner().invoke(app, ["fleet", "pull", str(fleet), "--store",
                                      "postgresql://edgekit:secret@127.0.0.1:1/nowhere"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --store postgresql://edgekit:***@127.0.0.1:1/nowhere: "
                                                   "cannot connect")
    assert "secret" not in result.output


def test_unwritable_or_unknown_store_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EdgekitError, match="cannot open the store"):
        open_store(str(blocker / "store.db"))
    with pytest.raises(EdgekitError, match="unknown kind of store"):
        open_store("mysql://h/db")


def test_postgresql_store_keeps_samples_as_bytea(tmp_path, postgres_url):
    store = open_store(postgres_url)
    with store:
        _pull(store, "a", range(1, 2), sample=b"pg bytes")
        digest = store.query("SELECT sample_sha256 FROM predictions")[0][0]
        assert store.sample_bytes(digest) == ("jpg", b"pg bytes")
    assert not (tmp_path / "samples").exists()
