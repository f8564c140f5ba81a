"""Shared fixtures: real servers on free loopback ports, stopped when their tests are done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import servers

torch.set_num_threads(1)


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
