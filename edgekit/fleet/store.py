"""One store of field data from every device: rows, cursors and content-addressed samples.

SQLite at `$EDGEKIT_HOME/fleet/store.db` by default, or a PostgreSQL server (`--store postgresql://...`)
when a team shares one. The two are reached through their plain DB-API drivers (sqlite3, psycopg 3, which
edgekit already depends on) with one set of SQL statements written for both (`?` placeholders become
`%s`, `ON CONFLICT DO NOTHING` works in each): the store is a handful of tables and upserts, for which
SQLAlchemy would add a layer and a dependency edgekit only has through Optuna.

Samples are stored once by the sha256 of their bytes: in SQLite's case as files `samples/<aa>/<sha>.<ext>`
beside store.db (the database stays small and a sample opens in any viewer), in PostgreSQL's as `bytea`
rows, because a shared server is the only place every team member's machine can read them from.

Every device pull is one transaction (rows, cursor, device facts): a failure leaves the store as it was,
and the cursor moves only with the rows it covers. Samples are stored as they arrive, each on its own
(`put_sample`), before the rows that name them commit: so a pull holds one chunk of samples in memory,
not a device's whole sample budget, and being named by its content, a sample a failed pull left behind
is harmless and is reused by the next pull.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.artifacts import edgekit_home, write_bytes_atomic
from edgekit.errors import EdgekitError

STORE_SCHEMA_VERSION = 1
SAMPLE_EXTENSIONS = ("jpg", "png", "gif", "bmp", "webp", "img")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# BIGINT/TEXT/DOUBLE PRECISION mean the same to both servers (SQLite maps them by affinity).
_TABLES = (
    "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS devices (name TEXT PRIMARY KEY, last_pull TEXT, disk TEXT, runner_version TEXT)",
    "CREATE TABLE IF NOT EXISTS cursors (device TEXT NOT NULL, log TEXT NOT NULL, db_id TEXT NOT NULL, "
    "predictions BIGINT NOT NULL, feedback BIGINT NOT NULL, shadow BIGINT NOT NULL, PRIMARY KEY (device, log))",
    "CREATE TABLE IF NOT EXISTS models (sha256 TEXT PRIMARY KEY, variant TEXT, labels TEXT NOT NULL, "
    "drift_reference TEXT)",
    "CREATE TABLE IF NOT EXISTS predictions (device TEXT NOT NULL, id TEXT NOT NULL, db_id TEXT NOT NULL, "
    "time TEXT NOT NULL, model_sha256 TEXT NOT NULL, source TEXT, top_label TEXT, top_score DOUBLE PRECISION, "
    "top_k TEXT NOT NULL, latency_ms DOUBLE PRECISION, sample_sha256 TEXT, PRIMARY KEY (device, id))",
    "CREATE INDEX IF NOT EXISTS predictions_time ON predictions (device, time)",
    "CREATE TABLE IF NOT EXISTS feedback (device TEXT NOT NULL, db_id TEXT NOT NULL, id BIGINT NOT NULL, "
    "prediction_id TEXT NOT NULL, label TEXT NOT NULL, time TEXT NOT NULL, source TEXT, "
    "PRIMARY KEY (device, db_id, id))",
    "CREATE INDEX IF NOT EXISTS feedback_prediction ON feedback (device, prediction_id)",
    "CREATE TABLE IF NOT EXISTS shadow (device TEXT NOT NULL, db_id TEXT NOT NULL, id BIGINT NOT NULL, "
    "prediction_id TEXT, row TEXT NOT NULL, PRIMARY KEY (device, db_id, id))",
)
_SAMPLES = {
    "sqlite": "CREATE TABLE IF NOT EXISTS samples (sha256 TEXT PRIMARY KEY, ext TEXT NOT NULL, size BIGINT NOT NULL)",
    "postgresql": "CREATE TABLE IF NOT EXISTS samples (sha256 TEXT PRIMARY KEY, ext TEXT NOT NULL, "
                  "size BIGINT NOT NULL, data BYTEA NOT NULL)",
}


def default_store_path() -> Path:
    return edgekit_home() / "fleet" / "store.db"


def redact(url: str) -> str:
    """A store URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


@dataclass
class Batch:
    """What one pull of one device brings: validated rows per log, plus the sample bytes fetched."""

    device: str
    logs: list[dict] = field(default_factory=list)  # {path, db_id, predictions, feedback, shadow, cursor}
    models: list[dict] = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)  # sha256 -> ext of the samples stored by this pull
    new_samples: int = 0
    disk: dict = field(default_factory=dict)
    runner_version: str = ""
    pulled_at: str = ""


class Store:
    """A connection to the field-data store; safe to share between the threads of a parallel pull."""

    def __init__(self, url: str | None = None):
        self.url = url or str(default_store_path())
        self.kind = "postgresql" if self.url.startswith(("postgresql://", "postgres://")) else "sqlite"
        self.lock = threading.Lock()
        self.conn = self._connect_postgres() if self.kind == "postgresql" else self._connect_sqlite()
        self._create()

    # -- connecting ---------------------------------------------------------------------------------
    def _connect_sqlite(self) -> sqlite3.Connection:
        path = Path(self.url.removeprefix("sqlite:///") if self.url.startswith("sqlite:///") else self.url)
        self.folder = path.parent
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except (sqlite3.Error, OSError) as exc:
            raise EdgekitError(f"--store {path}: cannot open the store ({exc}); pass a writable path or "
                               "a postgresql:// URL") from None

    def _connect_postgres(self):
        import psycopg

        self.folder = None
        try:
            return psycopg.connect(self.url, connect_timeout=5, autocommit=True)
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or ["no answer"])[0][:200]
            raise EdgekitError(f"--store {redact(self.url)}: cannot connect ({reason}); check the host, port, "
                               "user and that the database exists") from None

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.kind == "postgresql" else statement

    def _create(self) -> None:
        with self.transaction() as run:
            for statement in (*_TABLES, _SAMPLES[self.kind]):
                run(statement)
            run("INSERT INTO store_meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                (str(STORE_SCHEMA_VERSION),))
            version = int(run("SELECT value FROM store_meta WHERE key = 'schema_version'")[0][0])
        if version > STORE_SCHEMA_VERSION:
            raise EdgekitError(f"--store {redact(self.url)}: store schema {version} is newer than this edgekit "
                               f"({STORE_SCHEMA_VERSION}); upgrade edgekit")

    @contextlib.contextmanager
    def transaction(self):
        """Yields run(sql, params=()) -> rows; everything inside commits together or not at all."""
        with self.lock:
            cursor = self.conn.cursor()

            def run(statement: str, params=()):
                cursor.execute(self._sql(statement), params)
                return cursor.fetchall() if cursor.description else []

            try:
                if self.kind == "sqlite":
                    cursor.execute("BEGIN IMMEDIATE")
                    try:
                        yield run
                        cursor.execute("COMMIT")
                    except BaseException:
                        if self.conn.in_transaction:
                            cursor.execute("ROLLBACK")
                        raise
                else:
                    with self.conn.transaction():
                        yield run
            except (sqlite3.Error, OSError) as exc:
                raise EdgekitError(f"--store {self.url}: {exc}") from None
            except Exception as exc:
                if type(exc).__module__.startswith("psycopg"):
                    raise EdgekitError(f"--store {redact(self.url)}: {str(exc).strip().splitlines()[0]}") from None
                raise
            finally:
                cursor.close()

    def query(self, statement: str, params=()) -> list[tuple]:
        with self.transaction() as run:
            return run(statement, params)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- what a pull asks before it reads a device --------------------------------------------------
    def cursors(self, device: str) -> dict[str, dict]:
        rows = self.query("SELECT log, db_id, predictions, feedback, shadow FROM cursors WHERE device = ?", (device,))
        return {log: {"db_id": db_id, "predictions": p, "feedback": f, "shadow": s} for log, db_id, p, f, s in rows}

    def known_models(self) -> set[str]:
        return {row[0] for row in self.query("SELECT sha256 FROM models")}

    def missing_samples(self, digests: set[str]) -> set[str]:
        digests = sorted(digests)
        have = set()
        for start in range(0, len(digests), 500):
            chunk = digests[start:start + 500]
            have |= {row[0] for row in self.query(
                f"SELECT sha256 FROM samples WHERE sha256 IN ({','.join('?' * len(chunk))})", chunk)}
        return set(digests) - have

    # -- writing one pull ---------------------------------------------------------------------------
    def ingest(self, batch: Batch) -> dict:
        """Insert one device's pull in one transaction; returns how many rows and samples were new."""
        counts = {"predictions": 0, "feedback": 0, "shadow": 0, "samples": batch.new_samples}
        with self.transaction() as run:
            for model in batch.models:
                run("INSERT INTO models VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                    (model["sha256"], model.get("variant"), json.dumps(model["labels"]),
                     json.dumps(model["drift_reference"]) if model.get("drift_reference") else None))
            for log in batch.logs:
                counts_log = self._ingest_log(run, batch.device, log)
                for key, value in counts_log.items():
                    counts[key] += value
            run("INSERT INTO devices VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "last_pull = excluded.last_pull, disk = excluded.disk, runner_version = excluded.runner_version",
                (batch.device, batch.pulled_at, json.dumps(batch.disk), batch.runner_version))
        return counts

    def _ingest_log(self, run, device: str, log: dict) -> dict:
        counts = {}
        db_id = log["db_id"]
        for table, rows, values in (
                ("predictions", log["predictions"], lambda r: (
                    device, r["id"], db_id, r["time"], r["model_sha256"], r["source"], r["top_label"],
                    r["top_score"], r["top_k"], r["latency_ms"], r["sample_sha256"])),
                ("feedback", log["feedback"], lambda r: (
                    device, db_id, r["id"], r["prediction_id"], r["label"], r["time"], r["source"])),
                ("shadow", log["shadow"], lambda r: (device, db_id, r["id"], r["prediction_id"], r["row"]))):
            new = 0
            for row in rows:
                record = values(row)
                marks = ",".join("?" * len(record))
                new += len(run(f"INSERT INTO {table} VALUES ({marks}) ON CONFLICT DO NOTHING RETURNING device",
                               record))
            counts[table] = new
        cursor = log["cursor"]
        run("INSERT INTO cursors VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, log) DO UPDATE SET "
            "db_id = excluded.db_id, predictions = excluded.predictions, feedback = excluded.feedback, "
            "shadow = excluded.shadow",
            (device, log["path"], db_id, cursor["predictions"], cursor["feedback"], cursor["shadow"]))
        return counts

    # -- samples ------------------------------------------------------------------------------------
    def put_sample(self, sha: str, ext: str, data: bytes) -> bool:
        """Store one sample by content (its own transaction); returns whether it was new."""
        if self.kind == "sqlite":
            path = self.sample_path(sha, ext)
            if not path.is_file():
                write_bytes_atomic(path, data)
        values = (sha, ext, len(data)) + ((data,) if self.kind == "postgresql" else ())
        marks = ",".join("?" * len(values))
        return bool(self.query(f"INSERT INTO samples VALUES ({marks}) ON CONFLICT DO NOTHING RETURNING sha256", values))

    def sample_path(self, sha: str, ext: str) -> Path:
        """Where a SQLite store keeps a sample's bytes; both parts were validated, so it stays inside."""
        if not _SHA256.match(sha) or ext not in SAMPLE_EXTENSIONS:
            raise EdgekitError(f"sample {sha[:16]!r}.{ext[:8]!r}: not a sha256 and known extension")
        return self.folder / "samples" / sha[:2] / f"{sha}.{ext}"

    def sample_bytes(self, sha: str) -> tuple[str, bytes] | None:
        """A stored sample's extension and bytes (None when the store has not got it)."""
        columns = "ext, data" if self.kind == "postgresql" else "ext"
        rows = self.query(f"SELECT {columns} FROM samples WHERE sha256 = ?", (sha,))
        if not rows:
            return None
        if self.kind == "postgresql":
            return rows[0][0], bytes(rows[0][1])
        path = self.sample_path(sha, rows[0][0])
        return (rows[0][0], path.read_bytes()) if path.is_file() else None


def open_store(url: str | None = None) -> Store:
    """The store named by --store (a path, sqlite:///path or postgresql://...), default under EDGEKIT_HOME."""
    if url is not None and not url.strip():
        raise EdgekitError("--store: empty; pass a path, sqlite:///PATH or postgresql://USER@HOST/DB")
    if url and "://" in url and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise EdgekitError(f"--store {redact(url)}: unknown kind of store; use a path, sqlite:///PATH or "
                           "postgresql://USER@HOST/DB")
    return Store(os.path.expanduser(url) if url and "://" not in url else url)
