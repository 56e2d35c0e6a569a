"""VOX_FLOW_DURABLE_SUBMIT=waitaof on a broker that cannot confirm: refused before anything is
sent. Each test runs a private server (a real binary), configured to lack what it tests."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration import tasks
from vox_flow.app import create_app
from vox_flow.application import VoxFlow
from vox_flow.broker.server import RedisServer, embedded_binary, find_binary
from vox_flow.config import Settings
from vox_flow.errors import BrokerNotDurable
from vox_flow.keyspace import IDEM_SUBMIT
from vox_flow.submit import submit, submit_many
from vox_flow.tasks import TypedTask, typed_task

pytestmark = pytest.mark.integration

Server = Callable[..., RedisServer]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """``server(appendonly=True, without=("WAITAOF",), binary=...)``: a private server, with
    the commands in ``without`` renamed away (``rename-command X ""``); stopped after."""
    started: list[RedisServer] = []

    def start(
        appendonly: bool = True, without: tuple[str, ...] = (), binary: str | None = None
    ) -> RedisServer:
        path = binary or embedded_binary()
        if without:
            # RedisServer passes its own options; the wrapper adds the renames (exec keeps
            # the pid, which RedisServer checks to know the server is its own).
            wrapper = tmp_path / f"server-{len(started)}.sh"
            renames = " ".join(f'--rename-command {name} ""' for name in without)
            wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(path)} "$@" {renames}\n')
            wrapper.chmod(0o755)
            path = str(wrapper)
        broker = RedisServer(tmp_path / f"data-{len(started)}", binary=path, appendonly=appendonly)
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def durable_app(broker: RedisServer) -> tuple[VoxFlow, TypedTask[Any, Any]]:
    app = create_app(Settings(broker_url=broker.url, durable_submit="waitaof"))
    note = typed_task(app, name="durable.note")(_note)
    return app, note


def _note(item: tasks.Item) -> tasks.Echo:
    return tasks.Echo(id=item.id, value=item.value)


def calls(client: redis.Redis, command: str) -> int:
    """How often the server ran ``command`` (INFO commandstats; ``command|info`` for one
    subcommand)."""
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def assert_refused_and_nothing_sent(app: VoxFlow, note: TypedTask[Any, Any], lacks: str) -> None:
    # Before: WAITAOF ran after the enqueue script, so the message and its key were stored
    # and the caller was told the submit failed.
    with pytest.raises(BrokerNotDurable) as refused:
        submit(note, {"id": "n", "value": 1}, idempotency_key="once")
    assert lacks in str(refused.value)
    assert "nothing was enqueued" in str(refused.value)
    assert "VOX_FLOW_DURABLE_SUBMIT" in str(refused.value)
    with pytest.raises(BrokerNotDurable):
        submit_many(note, [{"id": "n", "value": 1}] * 2, idempotency_keys=["a", "b"])
    assert int(app.redis.llen(note.queue)) == 0
    assert app.redis.keys(IDEM_SUBMIT + "*") == []


def test_a_broker_without_waitaof_is_refused_before_the_enqueue(server: Server) -> None:
    app, note = durable_app(server(without=("WAITAOF",)))
    assert_refused_and_nothing_sent(app, note, "has no WAITAOF command")


def test_the_system_redis_before_7_2_is_refused_before_the_enqueue(server: Server) -> None:
    binary = find_binary()
    broker = server(binary=binary)
    if broker.version() >= (7, 2):
        pytest.skip(f"{binary} has WAITAOF (the renamed-command test covers its absence)")
    app, note = durable_app(broker)
    assert_refused_and_nothing_sent(app, note, "has no WAITAOF command")


def test_a_broker_with_appendonly_off_is_refused_before_the_enqueue(server: Server) -> None:
    app, note = durable_app(server(appendonly=False))
    assert_refused_and_nothing_sent(app, note, "has appendonly off")


def test_without_config_the_aof_state_is_read_from_info(server: Server) -> None:
    app, note = durable_app(server(appendonly=False, without=("CONFIG",)))
    assert_refused_and_nothing_sent(app, note, "has appendonly off")
    app, note = durable_app(server(appendonly=True, without=("CONFIG",)))
    assert submit(note, {"id": "n", "value": 1}).id
    assert int(app.redis.llen(note.queue)) == 1


def test_the_broker_is_asked_once_per_app_and_waitaof_runs_per_submit(server: Server) -> None:
    app, note = durable_app(server())
    for value in range(3):
        submit(note, {"id": "n", "value": value})
    submit_many(note, [{"id": "m", "value": 1}] * 2)
    assert int(app.redis.llen(note.queue)) == 5
    assert calls(app.redis, "command|info") == 1
    assert calls(app.redis, "config|get") == 1
    assert calls(app.redis, "waitaof") == 4  # the wait itself stays with every submit


def test_a_refusal_is_not_remembered_a_fixed_broker_is_used_at_once(server: Server) -> None:
    broker = server(appendonly=False)
    app, note = durable_app(broker)
    with pytest.raises(BrokerNotDurable, match="appendonly off"):
        submit(note, {"id": "n", "value": 1})
    app.redis.config_set("appendonly", "yes")
    assert submit(note, {"id": "n", "value": 1}).id
    assert int(app.redis.llen(note.queue)) == 1


def test_aof_turned_off_after_the_check_is_reported_as_enqueued(server: Server) -> None:
    """The check runs once: a broker changed later is caught by the WAITAOF after the
    enqueue, and the caller is told the truth — the message was sent."""
    app, note = durable_app(server())
    submit(note, {"id": "n", "value": 1})
    app.redis.config_set("appendonly", "no")
    with pytest.raises(BrokerNotDurable, match="WAS enqueued"):
        submit(note, {"id": "n", "value": 2})
    assert int(app.redis.llen(note.queue)) == 2
