"""Fixtures shared by every test: a private broker server for the whole session.

The server starts in ``pytest_configure``, and this process's ``vox_flow.app.app`` is built
from explicit settings naming it (``vox_flow.app.configure``), so nothing in the test process
reads ``VOX_FLOW_*`` from the environment or talks to the machine's shared Redis. Worker
subprocesses get their settings in the environment they are started with (workers.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from vox_flow.app import configure
from vox_flow.broker.server import RedisServer
from vox_flow.config import Settings

_server: RedisServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _server
    if _server is None:
        _server = RedisServer(Path(tempfile.mkdtemp(prefix="vf-redis-")), appendfsync="always")
        _server.start()
        # configure() refuses once the app exists: a helper that used it at import time,
        # before the broker was known, fails here instead of reaching another Redis.
        configure(Settings(broker_url=_server.url, task_modules=["vox_flow.examples.sample"]))


def pytest_unconfigure(config: pytest.Config) -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration and tests/inprocess (real Redis, real workers) is
    marked ``integration`` (a conftest's own ``pytestmark`` would mark nothing)."""
    for item in items:
        if {"integration", "inprocess"} & set(item.path.parts):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The session's private Redis server (system redis-server if present, else valkey)."""
    assert _server is not None
    return _server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The private server's URL, with an empty database for each test."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # a test that killed it may have left it down
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh VOX_FLOW_DATA_DIR for one test."""
    path = tmp_path / "data"
    path.mkdir()
    return path
