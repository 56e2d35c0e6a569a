"""The enqueue API: ``submit`` one run, ``submit_many`` in one pipelined transaction.

Both validate every payload before anything is sent: an invalid payload raises PayloadError
naming the field, and nothing is enqueued (for a batch: no item is). Messages are built by
Celery and kombu exactly as ``apply_async`` builds them (so any Celery worker reads them), but
they are written by one Redis script per message, which also records the idempotency key in
the same atomic step — a submit that returned is enqueued, and a key is never remembered for
a message that was not. With ``task_send_sent_event`` on (vox_flow's default, as for
``apply_async``) the same step publishes the run's ``task-sent`` event, built by Celery's own
event dispatcher: Flower and the op-log see it submitted, and no extra round trip is paid.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celery import signals
from celery.result import AsyncResult
from kombu.serialization import dumps
from opentelemetry import propagate
from pydantic import BaseModel

from vox_flow.attempts import AttemptLog
from vox_flow.contracts.task import HEADER_KEY, Attempt, TaskStatus
from vox_flow.errors import BrokerNotDurable, DeadLettered, TaskFailed
from vox_flow.execution import decode_result
from vox_flow.tasks import TypedTask, lookup
from vox_flow.telemetry import current_trace_id, tracer

if TYPE_CHECKING:
    from vox_flow.app import VoxFlow

Out = TypeVar("Out", bound=BaseModel)

_SUBMIT_PREFIX = "vf:idem:submit:"
_ARGSREPR_MAX = 1024

# KEYS: queue, submit key ('' when the run has none). ARGV: message, "task id trace id", ttl,
# event channel ('' for no event), event message.
# Returns '' when enqueued, else the earlier "task id trace id" remembered under the key.
_ENQUEUE_LUA = """
if KEYS[2] ~= '' then
  if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[3]) then
    return redis.call('GET', KEYS[2])
  end
end
redis.call('LPUSH', KEYS[1], ARGV[1])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return ''
"""


class TaskHandle(Generic[Out]):
    """A submitted run: its id, trace id, status and typed result."""

    def __init__(
        self, app: VoxFlow, task_id: str, output_model: type[Out], trace_id: str | None = None
    ) -> None:
        self.app = app
        self.id = task_id
        self.output_model = output_model
        self.trace_id = trace_id
        self._async: AsyncResult[Any] = AsyncResult(task_id, app=app)

    @property
    def status(self) -> TaskStatus:
        """Celery's state of the run (PENDING until a worker reports on it)."""
        return TaskStatus(self._async.state)

    def result(self, timeout: float | None = None) -> Out:
        """Wait for the output model; raises TaskFailed (with its dead letter id) on failure."""
        value = self._async.get(timeout=timeout, propagate=False)
        if self._async.failed():
            if isinstance(value, DeadLettered):
                raise TaskFailed(self.id, str(value), value.dead_letter_id)
            raise TaskFailed(self.id, f"{type(value).__name__}: {value}")
        envelope = decode_result(value)
        if envelope is not None:
            self.trace_id = self.trace_id or envelope.get("trace_id")
            value = envelope["output"]
        return self.output_model.model_validate(value)

    def attempts(self) -> list[Attempt]:
        """Every attempt recorded for this run so far."""
        return AttemptLog(self.app.redis, self.app.settings.attempts_ttl_seconds).list(self.id)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id} {self.output_model.__name__}>"


class _Commands:
    """Collects the Redis commands kombu would run for one publish (kombu's batch hook)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


def _capture(
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
    ``body``: serialized and enveloped by kombu itself, but not sent."""
    content_type, content_encoding, data = dumps(body, serializer=serializer)
    message = channel.prepare_message(
        data, priority, content_type, content_encoding, headers, properties
    )
    commands = _Commands()
    channel.basic_publish(
        message, exchange=exchange, routing_key=routing_key, _publish_batch=commands
    )
    (name, (key, value)), *rest = commands.commands
    if name != expected or rest:
        raise RuntimeError(f"unexpected broker commands for one publish: {commands.commands}")
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
        self.command = _capture(
            self.channel,
            "publish",
            body,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            properties={"delivery_mode": delivery_mode},
            serializer=serializer or "json",
        )


_local = threading.local()


def _channel(app: VoxFlow) -> Any:
    """A kombu channel of this process and thread, used only to build messages."""
    channel: Any = getattr(_local, "channel", None)
    if channel is None or _local.pid != os.getpid() or _local.app is not app:
        channel = app.connection_for_write().default_channel
        events = app.events.Dispatcher(channel=channel, buffer_while_offline=False)
        # The event exchange's type (fanout on Redis) decides how kombu publishes to it.
        exchange = events.exchange
        channel.exchange_declare(exchange=exchange.name, type=exchange.type)
        _local.channel, _local.pid, _local.app, _local.events = channel, os.getpid(), app, events
    return channel


Built = tuple[str, bytes, tuple[str, bytes] | None]  # queue, message, (event channel, event)


def _message(
    typed: TypedTask[Any, Any],
    payload: BaseModel,
    task_id: str,
    headers: dict[str, Any],
    countdown: float | None,
    eta: datetime | None,
    priority: int | None,
    batch: bool = False,
) -> Built:
    """(queue key, raw message, its task-sent event if the app sends them) for one run,
    built the way ``apply_async`` builds them.

    A single message gets its own publish span from opentelemetry-instrumentation-celery
    (through Celery's publish signals); the messages of a batch carry the batch's span,
    injected by OpenTelemetry's propagator, which the worker side extracts the same way.
    """
    app = typed.app
    args = payload.model_dump(mode="json")
    send_event = bool(app.conf.task_send_sent_event)
    task_headers, properties, body, sent_event = app.amqp.create_task_message(
        task_id,
        typed.name,
        (args,),
        {},
        countdown=countdown,
        eta=eta,
        time_limit=typed.time_limit,
        ignore_result=typed.celery_task.ignore_result,
        # What Flower shows as args; pydantic's JSON is cheaper than Celery's saferepr.
        argsrepr=payload.model_dump_json()[:_ARGSREPR_MAX],
        kwargsrepr="{}",
        create_sent_event=send_event,
    )
    task_headers.update(headers)
    if batch:
        propagate.inject(task_headers)
    else:
        signals.before_task_publish.send(
            sender=typed.name,
            body=body,
            exchange="",
            routing_key=typed.queue,
            headers=task_headers,
            properties=properties,
            declare=[],
            retry_policy={},
        )
    properties["delivery_mode"] = 2
    channel = _channel(app)
    queue, raw = _capture(
        channel,
        "lpush",
        body,
        exchange="",
        routing_key=typed.queue,
        headers=task_headers,
        properties=properties,
        priority=priority,
    )
    if not batch:
        signals.after_task_publish.send(
            sender=typed.name,
            body=body,
            headers=task_headers,
            exchange="",
            routing_key=typed.queue,
        )
    if not send_event:
        return queue, raw, None
    sent_event.update(queue=typed.queue, exchange="", routing_key=typed.queue)
    producer = _CapturingProducer(channel)
    _local.events.publish("task-sent", sent_event, producer)
    return queue, raw, producer.command


def _wait_durable(app: VoxFlow) -> None:
    if app.settings.durable_submit == "waitaof":
        # WAITAOF numlocal=1: wait until the server's own AOF holds every write of this
        # connection (how far that is on disk depends on its appendfsync; see operations.md).
        local, _ = app.redis.execute_command("WAITAOF", 1, 0, 5000)  # type: ignore[no-untyped-call]
        if int(local) < 1:
            raise BrokerNotDurable(
                "the broker did not confirm the submit reached its AOF within 5 s "
                "(is appendonly on?); the message was enqueued but may not survive a crash"
            )


def publish(
    typed: TypedTask[Any, Out],
    payload: BaseModel,
    *,
    task_id: str,
    effect_key: str | None = None,
    submit_key: str | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    priority: int | None = None,
) -> TaskHandle[Out]:
    """Enqueue one validated run under ``task_id`` (low level: ``submit`` is the API)."""
    app = typed.app
    with tracer.start_as_current_span(f"vox_flow.submit {typed.name}"):
        trace_id = current_trace_id()
        headers = {HEADER_KEY: effect_key} if effect_key else {}
        queue, raw, event = _message(typed, payload, task_id, headers, countdown, eta, priority)
        earlier = app.redis.eval(
            _ENQUEUE_LUA,
            2,
            queue,
            _SUBMIT_PREFIX + submit_key if submit_key else "",
            raw,
            f"{task_id} {trace_id or ''}",
            app.settings.idempotency_ttl_seconds,
            *(event or ("", "")),
        )
    if earlier:
        first_id, _, first_trace = earlier.decode().partition(" ")
        return TaskHandle(app, first_id, typed.output_model, first_trace or None)
    _wait_durable(app)
    return TaskHandle(app, task_id, typed.output_model, trace_id)


def submit(
    task: TypedTask[Any, Out] | str,
    payload: BaseModel | Mapping[str, Any],
    *,
    app: VoxFlow | None = None,
    idempotency_key: str | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    priority: int | None = None,
) -> TaskHandle[Out]:
    """Validate ``payload`` and enqueue one run of ``task``; returns its handle.

    With ``idempotency_key``: a key already seen returns the first run's handle and enqueues
    nothing, and however often the run is delivered its function completes once.
    Raises PayloadError (nothing enqueued) when the payload does not fit the input model.
    """
    typed = _resolve(task, app)
    model = typed.validate(payload)
    return publish(
        typed,
        model,
        task_id=str(uuid.uuid4()),
        effect_key=idempotency_key,
        submit_key=idempotency_key,
        countdown=countdown,
        eta=eta,
        priority=priority,
    )


def submit_many(
    task: TypedTask[Any, Out] | str,
    payloads: Iterable[BaseModel | Mapping[str, Any]],
    *,
    app: VoxFlow | None = None,
    idempotency_keys: Sequence[str | None] | None = None,
    priority: int | None = None,
) -> list[TaskHandle[Out]]:
    """Enqueue a batch of runs of ``task`` in one Redis transaction; all or nothing.

    Every payload is validated first: one invalid payload raises PayloadError (with its batch
    index) and none is enqueued. The batch is then written by one MULTI/EXEC pipeline, so the
    broker holds all of it or none of it. Items whose idempotency key was seen before return
    the earlier handle and are not enqueued again.
    """
    typed = _resolve(task, app)
    models = [typed.validate(payload, index) for index, payload in enumerate(payloads)]
    keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(models)
    if len(keys) != len(models):
        raise ValueError(
            f"idempotency_keys: {len(keys)} keys for {len(models)} payloads; give one per payload"
        )
    if not models:
        return []
    client = typed.app.redis
    script = client.register_script(_ENQUEUE_LUA)
    ttl = typed.app.settings.idempotency_ttl_seconds
    with tracer.start_as_current_span(f"vox_flow.submit_many {typed.name}"):
        trace_id = current_trace_id()
        ids = [str(uuid.uuid4()) for _ in models]
        messages = [
            _message(
                typed, model, task_id, {HEADER_KEY: key} if key else {}, None, None, priority,
                batch=True,
            )
            for model, key, task_id in zip(models, keys, ids, strict=True)
        ]  # fmt: skip
        with client.pipeline(transaction=True) as pipe:
            if not any(keys):
                # One LPUSH of the whole batch, in order (workers pop from the other end).
                pipe.lpush(messages[0][0], *(raw for _, raw, _ in messages))
                for _, _, event in messages:
                    if event is not None:
                        pipe.publish(*event)
                pipe.execute()
                replies: list[Any] = [b""] * len(models)
            else:
                for (queue, raw, event), key, task_id in zip(messages, keys, ids, strict=True):
                    script(
                        keys=[queue, _SUBMIT_PREFIX + key if key else ""],
                        args=[raw, f"{task_id} {trace_id or ''}", ttl, *(event or ("", ""))],
                        client=pipe,
                    )
                replies = pipe.execute()
    _wait_durable(typed.app)
    handles: list[TaskHandle[Out]] = []
    for task_id, earlier in zip(ids, replies, strict=True):
        trace: str | None = trace_id
        if earlier:
            task_id, _, first_trace = earlier.decode().partition(" ")
            trace = first_trace or None
        handles.append(TaskHandle(typed.app, task_id, typed.output_model, trace))
    return handles


def _resolve(task: TypedTask[Any, Out] | str, app: VoxFlow | None) -> TypedTask[Any, Out]:
    if isinstance(task, TypedTask):
        return task
    if app is None:
        raise TypeError("submit by task name needs the app: submit(name, payload, app=app)")
    return lookup(app, task)
