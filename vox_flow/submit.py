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

import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from pydantic import BaseModel

from vox_flow._celery.capture import Built, build
from vox_flow.contracts.task import HEADER_KEY
from vox_flow.errors import BrokerNotDurable
from vox_flow.handle import TaskHandle
from vox_flow.keyspace import IDEM_SUBMIT as _SUBMIT_PREFIX
from vox_flow.tasks import TypedTask, lookup
from vox_flow.telemetry import current_trace_id, tracer

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from datetime import datetime

    from vox_flow.application import VoxFlow

__all__ = ["TaskHandle", "publish", "submit", "submit_many"]

Out = TypeVar("Out", bound=BaseModel)

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


def _message(
    typed: TypedTask[Any, Any],
    payload: BaseModel,
    task_id: str,
    headers: dict[str, Any],
    countdown: float | None = None,
    eta: datetime | None = None,
    priority: int | None = None,
    batch: bool = False,
) -> Built:
    """The Redis commands that enqueue one run (and announce it), as apply_async builds them."""
    return build(
        typed.app,
        name=typed.name,
        queue=typed.queue,
        args=payload.model_dump(mode="json"),
        task_id=task_id,
        headers=headers,
        time_limit=typed.time_limit,
        ignore_result=bool(typed.celery_task.ignore_result),
        # What Flower shows as args; pydantic's JSON is cheaper than Celery's saferepr.
        argsrepr=payload.model_dump_json()[:_ARGSREPR_MAX],
        countdown=countdown,
        eta=eta,
        priority=priority,
        batch=batch,
    )


def _wait_durable(app: VoxFlow) -> None:
    if app.settings.durable_submit == "waitaof":
        # WAITAOF numlocal=1: wait until the server's own AOF holds every write of this
        # connection (how far that is on disk depends on its appendfsync; see operations.md).
        try:
            local, _ = app.redis.execute_command("WAITAOF", 1, 0, 5000)  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            # Raised after the enqueue: the caller must not take it for "nothing was sent".
            raise BrokerNotDurable(
                f"VOX_FLOW_DURABLE_SUBMIT=waitaof, but the broker refused WAITAOF ({exc}; it "
                "needs Redis/Valkey >= 7.2 with appendonly yes); the message WAS enqueued "
                "and will run: do not submit it again"
            ) from exc
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
    with tracer().start_as_current_span(f"vox_flow.submit {typed.name}"):
        trace_id = current_trace_id()
        headers: dict[str, Any] = {HEADER_KEY: effect_key} if effect_key else {}
        built = _message(typed, payload, task_id, headers, countdown, eta, priority)
        earlier = app.redis.eval(
            _ENQUEUE_LUA,
            2,
            built.queue,
            _SUBMIT_PREFIX + submit_key if submit_key else "",
            built.message,
            f"{task_id} {trace_id or ''}",
            app.settings.idempotency_ttl_seconds,
            *(built.event or ("", "")),
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
    with tracer().start_as_current_span(f"vox_flow.submit_many {typed.name}"):
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
                pipe.lpush(messages[0].queue, *(built.message for built in messages))
                for built in messages:
                    if built.event is not None:
                        pipe.publish(*built.event)
                pipe.execute()
                replies: list[Any] = [b""] * len(models)
            else:
                for built, key, task_id in zip(messages, keys, ids, strict=True):
                    script(
                        keys=[built.queue, _SUBMIT_PREFIX + key if key else ""],
                        args=[
                            built.message,
                            f"{task_id} {trace_id or ''}",
                            ttl,
                            *(built.event or ("", "")),
                        ],
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
