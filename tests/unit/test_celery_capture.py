"""Capturing a run's message sends nothing, and captures what ``apply_async`` would send.

Against the session's private Redis: opening kombu's channel pings it (allowed, and done
before the spy looks); building the message must then send no command at all.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.utils.saferepr import saferepr
from redis.connection import AbstractConnection

from vox_flow._celery.capture import Built, build, capture, message_channel
from vox_flow._celery.layout import layout
from vox_flow.app import create_app
from vox_flow.application import VoxFlow
from vox_flow.config import Settings

ARGS = {"id": "a", "value": 1}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every command redis-py writes to a server from this thread while the test runs (every
    client, pipeline and pub/sub connection sends through ``send_packed_command``; a capture
    runs in its caller's thread, and other threads of the session are not its doing)."""
    commands: list[bytes] = []
    real = AbstractConnection.send_packed_command
    here = threading.get_ident()

    def spy(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == here:
            commands.append(b"".join(command) if isinstance(command, list) else bytes(command))
        real(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    yield commands


def _app(redis_url: str, **options: Any) -> VoxFlow:
    app = create_app(Settings(broker_url=redis_url))
    app.conf.broker_transport_options.update(options)
    return app


def _build(app: VoxFlow, queue: str = "q", priority: int | None = None) -> Built:
    return build(
        app,
        name="t.echo",
        queue=queue,
        args=ARGS,
        task_id="tid-1",
        headers={"vf_key": "k"},
        time_limit=5.0,
        ignore_result=False,
        # What apply_async puts there when not told (Celery's own repr of the args).
        argsrepr=saferepr((ARGS,), app.amqp.argsrepr_maxsize),
        priority=priority,
    )


def test_building_a_message_sends_nothing_to_the_broker(redis_url: str, sent: list[bytes]) -> None:
    app = _app(redis_url)
    channel = message_channel(app)  # opening the channel pings: allowed, and seen by the spy
    layout(app)
    assert any(b"PING" in command for command in sent), sent
    sent.clear()
    built = _build(app)
    assert built.event is not None  # the task-sent event was captured too
    key, raw = capture(
        channel,
        "lpush",
        {"x": 1},
        exchange="",
        routing_key="other",
        headers={},
        properties={"delivery_mode": 2},
    )
    assert key == "other" and json.loads(raw)["headers"] == {}
    assert sent == []


def _task_sent(events: Any) -> dict[str, Any]:
    """The next task-sent event published on the server (whatever else is published)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = events.get_message(timeout=0.5)
        if message and message["type"] == "pmessage" and b"task.sent" in message["channel"]:
            return dict(message)
    raise AssertionError("no task-sent event was published")


def _without_ids(message: dict[str, Any]) -> dict[str, Any]:
    message["properties"].pop("delivery_tag")
    # apply_async names its thread's RPC reply queue; vox_flow's results are in the result
    # backend, which never reads it.
    message["properties"].pop("reply_to")
    # With Celery's OpenTelemetry instrumentation on (an in-process worker earlier in the
    # session starts it), each publish carries its own span: same header, other span ids.
    headers = message["headers"]
    if "traceparent" in headers:
        headers["traceparent"] = "-".join(headers["traceparent"].split("-")[::3])
    return message


def _event(message: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(base64.b64decode(message.pop("body")))
    del body["clock"], body["timestamp"]  # the dispatcher's Lamport clock and the send time
    message["properties"].pop("delivery_tag")
    return {**message, "body": body}


@pytest.mark.parametrize(
    ("options", "priority", "server_key"),
    [
        ({}, None, "q"),
        ({"global_keyprefix": "t1:"}, 7, "t1:q\x06\x166"),
    ],
    ids=["defaults", "prefix-and-priority"],
)
def test_captured_message_is_what_apply_async_sends(
    redis_url: str, options: dict[str, Any], priority: int | None, server_key: str
) -> None:
    app = _app(redis_url, **options)
    built = _build(app, priority=priority)
    server = redis.Redis.from_url(redis_url)
    events = server.pubsub()
    events.psubscribe("*")
    assert events.get_message(timeout=2)["type"] == "psubscribe"
    app.send_task(
        "t.echo",
        args=(ARGS,),
        task_id="tid-1",
        queue="q",
        headers={"vf_key": "k"},
        time_limit=5.0,
        ignore_result=False,
        priority=priority,
    )
    assert built.queue == server_key
    assert server.llen(server_key) == 1
    sent_message = json.loads(server.lpop(server_key))  # type: ignore[arg-type]
    assert _without_ids(json.loads(built.message)) == _without_ids(sent_message)
    published = _task_sent(events)
    events.close()
    assert built.event is not None
    assert built.event[0] == published["channel"].decode()
    assert _event(json.loads(built.event[1])) == _event(json.loads(published["data"]))
