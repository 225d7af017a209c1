"""Shared fixtures: an isolated EDGEKIT_HOME per test and one tiny trained run per session.

Training and TFLite conversion dominate test time on 2 cores, so anything expensive is built once
per session and shared read-only.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

# Session fixtures that live in helper modules are registered here, once: a test module importing them would
# get its own copy of the fixture, and a "session" fixture defined in three modules is built three times.
from fleet_models import images_fixture, models_fixture  # noqa: E402, F401  (fleet_models, fleet_images)


@pytest.fixture(autouse=True)
def edgekit_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "edgekit-home"
    home.mkdir()
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    return home


@pytest.fixture
def postgres_url() -> str:
    """A database of its own on the test PostgreSQL server, dropped afterwards.

    Tests run in parallel (pytest-xdist), so two tests must never share tables: one clearing a table
    while another counts its rows would fail either at random.
    """
    base = os.environ.get("EDGEKIT_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("EDGEKIT_TEST_POSTGRES_URL is unset: start a server with `eval \"$(.ci/start-postgres)\"` "
                    "(bash .ci/run does)")
    import secrets
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"t_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(base, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(base, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def runner():
    """The standalone on-device runner imported as a module (the same loader `edgekit.data` uses)."""
    from edgekit.devices import runner_module

    return runner_module()


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """200 digits as a class-folder PNG dataset at 32 px (20 per class)."""
    from edgekit.data import export_digits

    return export_digits(tmp_path_factory.mktemp("digits") / "data", image_size=32, limit_per_class=20)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> object:
    """Build a read-only session artifact once per test run, even with several pytest-xdist workers.

    Without xdist this is `build(tmp_path_factory.mktemp(name))`. Under xdist the workers share the
    parent of their temporary folders: the first to take an exclusive lock builds into `name/` and records
    what `build` returned (JSON: paths as strings); the others wait on the lock and reuse it. Training and
    converting the same tiny model in two workers at once would take both cores for twice as long.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent
    directory, record = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if record.is_file():
            return json.loads(record.read_text())
        shutil.rmtree(directory, ignore_errors=True)  # a worker that died while building left half of it
        directory.mkdir()
        built = build(directory)
        record.write_text(json.dumps(built))
        return built


TINY_VARIANTS = ("float32", "int8-ptq")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run on the embedded digits (alpha 0.35, 32 px, 4 short epochs of 8 batches) with its
    float32 and int8-ptq variants (one conversion each).

    Tests write into it (more variants, reports), so under pytest-xdist each worker gets its own copy of
    one pristine build that no test touches; the copy's variant manifests name the pristine run as their
    parent, a path only `info` shows.
    """
    from edgekit.compress.pipeline import compress_all
    from edgekit.config import TrainConfig
    from edgekit.recipes import load_recipe
    from edgekit.train import train

    def build(runs: Path) -> str:
        config = TrainConfig(epochs=4, steps_per_epoch=8, name="tiny", runs_dir=str(runs), patience=10)
        run_dir = train(config).run_dir
        compress_all(run_dir, [load_recipe(name) for name in TINY_VARIANTS])
        return str(run_dir)

    built = Path(built_once(tmp_path_factory, "tiny-run", build))
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return built
    copy = tmp_path_factory.mktemp("runs") / built.name
    shutil.copytree(built, copy, symlinks=True)
    return copy


@pytest.fixture(scope="session")
def variants(tiny_run) -> dict[str, Path]:
    """The tiny run's float32 and int8-ptq variants, shared by every module."""
    return {name: tiny_run / "compressed" / name for name in TINY_VARIANTS}
