"""Shared fixtures: an isolated EDGEKIT_HOME per test and one tiny trained run per session.

Training and TFLite conversion dominate test time on 2 cores, so anything expensive is built once
per session and shared read-only.
"""

from __future__ import annotations

import os
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
def postgres_url(request) -> str:
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run on the embedded digits: alpha 0.35, 32 px, 4 short epochs of 8 batches."""
    from edgekit.config import TrainConfig
    from edgekit.train import train

    runs = tmp_path_factory.mktemp("runs")
    result = train(TrainConfig(epochs=4, steps_per_epoch=8, name="tiny", runs_dir=str(runs), patience=10))
    return result.run_dir


@pytest.fixture(scope="session")
def variants(tiny_run):
    """float32 and int8-ptq variants of the tiny run (one conversion each), shared by every module."""
    from edgekit.compress.pipeline import compress_all
    from edgekit.recipes import load_recipe

    made = compress_all(tiny_run, [load_recipe("float32"), load_recipe("int8-ptq")])
    return {variant.manifest.name: variant.directory for variant in made}
