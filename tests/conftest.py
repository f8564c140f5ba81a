"""Shared fixtures: real servers on free loopback ports, stopped when their tests are done."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from catalog_fixtures import CATALOG_TRACKS, MUSIC, random_encoder
from encoders import load_encoder
from monitor.bench import servers
from monitor.catalog import Catalog

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`airtrace monitor` keeps its play log under $XDG_DATA_HOME by default: the tests' goes to a temporary one."""
    path = tmp_path_factory.mktemp("data-home")
    os.environ["XDG_DATA_HOME"] = str(path)
    return path


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.ServerProcess]:
    """One Tansu broker for the session; tests keep apart by using their own topic names and groups."""
    broker = servers.tansu(tmp_path_factory.mktemp("tansu"))
    yield broker
    broker.stop()


@pytest.fixture
def redis_server(tmp_path) -> Iterator[servers.ServerProcess]:
    """A fresh redis-server per test (it starts in milliseconds), so a test may stop and restart it."""
    server = servers.redis_server(tmp_path)
    yield server
    server.stop()


SERVICE_TRACKS = ("area1-game", "area2-game", "gardien-go", "over-theme")  # area3-game and termigator_reg-zbb stay out


@pytest.fixture(scope="session")
def service_encoder_source() -> str:
    """The encoder the service tests run: the shipped default, or AIRTRACE_TEST_ENCODER (a name or directory)."""
    from encoders import DEFAULT_ENCODER

    return os.environ.get("AIRTRACE_TEST_ENCODER", DEFAULT_ENCODER)


@pytest.fixture(scope="session")
def service_catalog(tmp_path_factory: pytest.TempPathFactory, service_encoder_source: str) -> Path:
    """A calibrated catalog of four demo tracks, built once per session; copy it before changing it."""
    from encoders import load_encoder
    from monitor.catalog import Catalog
    from monitor.stages.calibration import calibrate

    directory = tmp_path_factory.mktemp("service") / "catalog"
    catalog = Catalog.create(directory, load_encoder(service_encoder_source), encoder_source=service_encoder_source)
    report = catalog.add([MUSIC / f"{name}.opus" for name in SERVICE_TRACKS], progress=False)
    assert not report.skipped, report.skipped
    calibrate(catalog)
    return directory


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.PostgresServer]:
    """One throwaway PostgreSQL cluster for the session; each test takes a database of its own (`postgres_url`)."""
    server = servers.postgres_server()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres: servers.PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    import re
    import uuid

    name = re.sub(r"\W", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    return postgres.create_database(name)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """`airtrace demo`'s run, once per session: (work directory, scorecard, the play events in order)."""
    from monitor.demo.run import run_demo

    workdir = tmp_path_factory.mktemp("demo")
    events: list = []
    card = run_demo(workdir, on_event=events.append)
    return workdir, card, events


# ---- a random-weight encoder and a catalog of the demo music (catalog_fixtures), per test module ----


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_encoder().save(tmp_path_factory.mktemp("encoder") / "random")


@pytest.fixture(scope="module")
def built_catalog(tmp_path_factory: pytest.TempPathFactory, encoder_dir: Path) -> Path:
    """A catalog of CATALOG_TRACKS, built once per module; copy it before changing it."""
    directory = tmp_path_factory.mktemp("catalog") / "catalog"
    catalog = Catalog.create(directory, load_encoder(encoder_dir), encoder_source=str(encoder_dir))
    report = catalog.add([MUSIC / f"{name}.opus" for name in CATALOG_TRACKS], progress=False)
    assert report.added == list(CATALOG_TRACKS)
    return directory


@pytest.fixture
def catalog_copy(built_catalog: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_catalog, tmp_path / "catalog"))
