"""A task message built exactly as ``apply_async`` builds it, captured instead of sent.

Celery builds the message (``amqp.create_task_message``) and kombu serializes and envelopes it
(``prepare_message``, ``basic_publish``); kombu's publish-batch hook (kombu >= 5.7, checked by
``versions.check_transport``) hands over the one Redis command it would run, and nothing is
sent. vox_flow then runs that command inside its own Lua script, atomically with the
idempotency key. The same goes for the run's ``task-sent`` event, built by Celery's own event
dispatcher.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery, signals
from kombu.serialization import dumps
from opentelemetry import propagate

from vox_flow._celery.layout import layout

if TYPE_CHECKING:
    from datetime import datetime


class Commands:
    """Collects the Redis commands kombu would run for one publish (kombu's batch hook)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


def capture(
    channel: Any,
    expected: str,
    body: Any,
    *,
    exchange: str,
    routing_key: str,
    headers: dict[str, Any] | None,
    properties: dict[str, Any],
    priority: int | None = None,
    serializer: str = "json",
) -> tuple[Any, Any]:
    """The arguments of the one Redis command (``expected``) kombu would run to publish
    ``body``: serialized and enveloped by kombu itself, but not sent. The key is as kombu
    names it (before its ``global_keyprefix``)."""
    content_type, content_encoding, data = dumps(body, serializer=serializer)
    message = channel.prepare_message(
        data, priority, content_type, content_encoding, headers, properties
    )
    commands = Commands()
    channel.basic_publish(
        message, exchange=exchange, routing_key=routing_key, _publish_batch=commands
    )
    if len(commands.commands) != 1 or commands.commands[0][0] != expected:
        raise RuntimeError(f"unexpected broker commands for one publish: {commands.commands}")
    _, (key, value) = commands.commands[0]
    return key, value


class _CapturingProducer:
    """What Celery's EventDispatcher publishes through: the broker command is kept, not sent."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.command: tuple[str, bytes] | None = None  # (channel, message) to PUBLISH

    def publish(
        self,
        body: Any,
        routing_key: str,
        exchange: str,
        serializer: str | None = None,
        headers: dict[str, Any] | None = None,
        delivery_mode: int | None = None,
        **_: Any,
    ) -> None:
        self.command = capture(
            self.channel,
            "publish",
            body,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            properties={"delivery_mode": delivery_mode},
            serializer=serializer or "json",
        )


class _Local(threading.local):
    channel: Any = None
    events: Any = None
    pid: int = 0
    app: Celery | None = None


_local = _Local()


def message_channel(app: Celery) -> Any:
    """A kombu channel of this process and thread, used only to build messages (opening it
    pings the broker once; building a message on it sends nothing)."""
    channel: Any = _local.channel
    if channel is None or _local.pid != os.getpid() or _local.app is not app:
        channel = app.connection_for_write().default_channel
        events = app.events.Dispatcher(channel=channel, buffer_while_offline=False)
        # The event exchange's type (fanout on Redis) decides how kombu publishes to it.
        exchange = events.exchange
        channel.exchange_declare(exchange=exchange.name, type=exchange.type)
        _local.channel, _local.pid, _local.app, _local.events = channel, os.getpid(), app, events
    return channel


@dataclass(frozen=True)
class Built:
    """One run's message and event, as the Redis commands that send them (server keys)."""

    queue: str  # the list to LPUSH ``message`` onto
    message: bytes
    event: tuple[str, bytes] | None  # (pub/sub channel, task-sent event) to PUBLISH
    bell: str  # the queue's bell, to LPUSH after the message (transport.py)


def build(
    app: Celery,
    *,
    name: str,
    queue: str,
    args: Any,
    task_id: str,
    headers: dict[str, Any],
    time_limit: float | None,
    ignore_result: bool,
    argsrepr: str,
    countdown: float | None = None,
    eta: datetime | None = None,
    priority: int | None = None,
    batch: bool = False,
) -> Built:
    """The message (and task-sent event, if the app sends them) of one run of task ``name``.

    A single message goes through Celery's publish signals, so opentelemetry-instrumentation-
    celery (where it is on) gives it a publish span; every message also carries the current
    trace context, injected by OpenTelemetry's propagator, which the worker extracts.
    """
    send_event = bool(app.conf.task_send_sent_event)
    task_headers, properties, body, sent_event = app.amqp.create_task_message(
        task_id,
        name,
        (args,),
        {},
        countdown=countdown,
        eta=eta,
        time_limit=time_limit,
        ignore_result=ignore_result,
        argsrepr=argsrepr,
        kwargsrepr="{}",
        create_sent_event=send_event,
    )
    task_headers.update(headers)
    propagate.inject(task_headers)
    if not batch:
        signals.before_task_publish.send(
            sender=name,
            body=body,
            exchange="",
            routing_key=queue,
            headers=task_headers,
            properties=properties,
            declare=[],
            retry_policy={},
        )
    properties["delivery_mode"] = 2
    channel = message_channel(app)
    where = layout(app)
    key, raw = capture(
        channel,
        "lpush",
        body,
        exchange="",
        routing_key=queue,
        headers=task_headers,
        properties=properties,
        priority=priority,
    )
    if not batch:
        signals.after_task_publish.send(
            sender=name, body=body, headers=task_headers, exchange="", routing_key=queue
        )
    bell = where.bell(queue)
    if not send_event:
        return Built(where.key(key), raw, None, bell)
    sent_event.update(queue=queue, exchange="", routing_key=queue)
    producer = _CapturingProducer(channel)
    _local.events.publish("task-sent", sent_event, producer)
    event = producer.command
    return Built(where.key(key), raw, (where.key(event[0]), event[1]) if event else None, bell)
