"""The private broker server comes up on a port of its own, even when the one it picked
was taken before it could bind it (real server binaries)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from vox_flow.broker import server as server_module
from vox_flow.broker.server import RedisServer, ServerStartError, free_port

pytestmark = pytest.mark.integration


def _ports(monkeypatch: pytest.MonkeyPatch, *first: int) -> list[int]:
    """Make the server's free-port choice return ``first`` ports, then really free ones.
    Returns the ports not handed out yet."""
    queue = list(first)
    monkeypatch.setattr(server_module, "free_port", lambda: queue.pop(0) if queue else free_port())
    return queue


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something else listens on (not a Redis server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_taken_before_the_bind_is_chosen_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    unused = _ports(monkeypatch, listener)
    server = RedisServer(tmp_path / "broker", appendonly=False)
    server.start()
    try:
        assert unused == []  # the taken port was tried first
        assert server.port != listener
        assert server.process is not None
        client = redis.Redis(port=server.port)
        assert client.info("server")["process_id"] == server.process.pid
        client.close()
    finally:
        server.stop()


def test_another_redis_on_the_port_is_not_taken_for_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    """The session's server answers PING on its port; ours must not mistake it for itself."""
    unused = _ports(monkeypatch, redis_server.port)
    server = RedisServer(tmp_path / "broker", appendonly=False)
    server.start()
    try:
        assert unused == []
        assert server.port != redis_server.port
        assert server.process is not None and redis_server.process is not None
        assert server.process.pid != redis_server.process.pid
        client = redis.Redis(port=server.port)
        assert client.info("server")["process_id"] == server.process.pid
        client.close()
    finally:
        server.stop()


def test_a_fixed_port_that_is_taken_is_an_error(tmp_path: Path, listener: int) -> None:
    server = RedisServer(tmp_path / "broker", port=listener, appendonly=False)
    with pytest.raises(ServerStartError, match="exited"):
        server.start()
