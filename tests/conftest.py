"""Fixtures shared by every test: a private broker server for the whole session.

The server starts in ``pytest_configure``, before any test module imports ``vox_flow.app``,
so the app in this process and every worker subprocess talk to it (never to a shared Redis).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from vox_flow.broker.server import RedisServer

_server: RedisServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _server
    # The app reads its broker URL when imported: imported before this point (by a conftest
    # or helper module at its top), it would talk to the machine's shared Redis.
    if "vox_flow.app" in sys.modules:
        raise pytest.UsageError("vox_flow.app was imported before the test broker was set")
    if _server is None:
        _server = RedisServer(Path(tempfile.mkdtemp(prefix="vf-redis-")), appendfsync="always")
        _server.start()
        os.environ["VOX_FLOW_BROKER_URL"] = _server.url
        os.environ.pop("VOX_FLOW_RESULT_BACKEND", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is marked ``integration`` (a conftest's own
    ``pytestmark`` would mark nothing)."""
    for item in items:
        if "integration" in item.path.parts:
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
