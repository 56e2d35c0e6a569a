"""The enqueue API: ``submit`` one run, ``submit_many`` in one pipelined transaction.

Both validate every payload before anything is sent: an invalid payload raises PayloadError
naming the field, and nothing is enqueued (for a batch: no item is). Messages are built by
Celery and kombu exactly as ``apply_async`` builds them (so any Celery worker reads them), but
they are written by one Redis script per message, which also records the idempotency key in
the same atomic step — a submit that returned is enqueued, and a key is never remembered for
a message that was not. With ``task_send_sent_event`` on (vox_flow's default, as for
``apply_async``) the same step publishes the run's ``task-sent`` event, built by Celery's own
event dispatcher: Flower and the op-log see it submitted, and no extra round trip is paid.

Every other argument is checked before anything is sent, too: a bad one raises
SubmitArgumentError naming it, and nothing is enqueued nor any key remembered. An
idempotency key is scoped to its task: the same key given to two tasks names two runs.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from numbers import Real
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from pydantic import BaseModel

from vox_flow import jsonvalue
from vox_flow._celery.capture import Built, build
from vox_flow.application import VoxFlow
from vox_flow.contracts.task import HEADER_KEY, shown_args
from vox_flow.errors import BrokerNotDurable, JsonValueError, SubmitArgumentError
from vox_flow.handle import TaskHandle
from vox_flow.keyspace import idem_submit
from vox_flow.tasks import TypedTask, lookup
from vox_flow.telemetry import current_trace_id, tracer

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["MAX_IDEMPOTENCY_KEY_LENGTH", "TaskHandle", "publish", "submit", "submit_many"]

Out = TypeVar("Out", bound=BaseModel)

MAX_IDEMPOTENCY_KEY_LENGTH = 1024  # characters; a key is part of a Redis key and a header
_PRIORITIES = range(10)  # 0 (lowest) .. 9, as Celery's Redis transport takes them

# KEYS: queue, submit key ('' when the run has none), the queue's bell. ARGV: message,
# "task id trace id", ttl, event channel ('' for no event), event message.
# Returns '' when enqueued, else the earlier "task id trace id" remembered under the key.
_ENQUEUE_LUA = """
if KEYS[2] ~= '' then
  if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[3]) then
    return redis.call('GET', KEYS[2])
  end
end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[3], '1')
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return ''
"""


def _message(
    typed: TypedTask[Any, Any],
    payload: tuple[BaseModel, dict[str, Any]],
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
        args=payload[1],
        task_id=task_id,
        headers=headers,
        time_limit=typed.time_limit,
        ignore_result=bool(typed.celery_task.ignore_result),
        # What Flower shows as args (JSON, cheaper than Celery's saferepr; retries show the same).
        argsrepr=shown_args(payload[1]),
        countdown=countdown,
        eta=eta,
        priority=priority,
        batch=batch,
    )


# Apps (per process) whose broker was seen to support WAITAOF with appendonly on.
_durable_ok: weakref.WeakKeyDictionary[VoxFlow, int] = weakref.WeakKeyDictionary()
_durable_lock = threading.Lock()


def _check_durable(app: VoxFlow) -> None:
    """With VOX_FLOW_DURABLE_SUBMIT=waitaof, make sure (once per app and process, before the
    first enqueue) that the broker can confirm writes with WAITAOF; else BrokerNotDurable,
    with nothing enqueued. Only a yes is remembered: a broker fixed later is seen at once."""
    if app.settings.durable_submit != "waitaof" or _durable_ok.get(app) == os.getpid():
        return
    with _durable_lock:
        if _durable_ok.get(app) == os.getpid():
            return
        missing = _durability_missing(app.redis)
        if missing:
            raise BrokerNotDurable(
                f"VOX_FLOW_DURABLE_SUBMIT=waitaof, but the broker {missing}; nothing was "
                "enqueued. It needs Redis/Valkey >= 7.2 with appendonly yes (or set "
                "VOX_FLOW_DURABLE_SUBMIT=none)"
            )
        _durable_ok[app] = os.getpid()


def _durability_missing(client: redis.Redis) -> str | None:
    """What the server lacks for WAITAOF numlocal=1 to work, or None when it has it all."""
    # COMMAND INFO answers [None] for a command the server lacks (or that was renamed away).
    if client.execute_command("COMMAND INFO", "WAITAOF") in ([None], [], None):  # type: ignore[no-untyped-call]
        return "has no WAITAOF command"
    try:
        config = client.config_get("appendonly")
        aof_on = str(config.get("appendonly", "")).lower() == "yes"
    except redis.ResponseError:  # CONFIG renamed or refused (managed services): ask INFO
        aof_on = int(client.info("persistence").get("aof_enabled", 0)) == 1
    return None if aof_on else "has appendonly off"


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
    wired = (payload, jsonvalue.dump(payload, field="payload"))
    return _publish(typed, wired, task_id, effect_key, submit_key, countdown, eta, priority)


def _publish(
    typed: TypedTask[Any, Out],
    wired: tuple[BaseModel, dict[str, Any]],
    task_id: str,
    effect_key: str | None,
    submit_key: str | None,
    countdown: float | None,
    eta: datetime | None,
    priority: int | None,
) -> TaskHandle[Out]:
    app = typed.app
    _check_durable(app)
    with tracer().start_as_current_span(f"vox_flow.submit {typed.name}"):
        trace_id = current_trace_id()
        headers: dict[str, Any] = {HEADER_KEY: effect_key} if effect_key else {}
        built = _message(typed, wired, task_id, headers, countdown, eta, priority)
        earlier = app.redis.eval(
            _ENQUEUE_LUA,
            3,
            built.queue,
            idem_submit(typed.name, submit_key) if submit_key else "",
            built.bell,
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
    """Validate ``payload`` and every argument, then enqueue one run of ``task``; its handle.

    ``task`` is a typed task or its name (then ``app`` is needed); ``countdown`` (seconds, a
    finite number >= 0) or ``eta`` (a timezone-aware datetime; a naive one is refused) delay
    the run; ``priority`` is an int from 0 to 9. With ``idempotency_key`` (a non-empty str
    of at most 1,024 characters) a key already seen *for this task* returns the first run's
    handle and enqueues nothing, and however often the run is delivered its function
    completes once. Raises SubmitArgumentError or PayloadError (nothing enqueued) when an
    argument or the payload is invalid.
    """
    typed = _resolve(task, app)
    _check_key(idempotency_key, "idempotency_key")
    delay = _check_delay(countdown, eta)
    level = _check_priority(priority)
    return _publish(
        typed,
        typed.wire(payload),
        str(uuid.uuid4()),
        idempotency_key,
        idempotency_key,
        delay,
        eta,
        level,
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

    Every argument and payload is validated first, as ``submit`` does: one invalid payload
    raises PayloadError (with its batch index), a bad argument SubmitArgumentError (a key
    named ``idempotency_keys[i]``), and none is enqueued. ``idempotency_keys`` gives one key
    (or None) per payload. The batch is then written by one MULTI/EXEC pipeline, so the
    broker holds all of it or none of it. Items whose key was seen before for this task
    return the earlier handle and are not enqueued again.
    """
    typed = _resolve(task, app)
    if isinstance(payloads, (str, bytes, Mapping, BaseModel)):
        raise SubmitArgumentError(
            "payloads",
            f"expected an iterable of payloads, got one {type(payloads).__name__} "
            "(for a single payload use submit)",
        )
    level = _check_priority(priority)
    if idempotency_keys is not None and (
        isinstance(idempotency_keys, (str, bytes)) or not isinstance(idempotency_keys, Sequence)
    ):
        raise SubmitArgumentError(
            "idempotency_keys",
            f"expected a list of keys (or None), one per payload, "
            f"got {type(idempotency_keys).__name__}",
        )
    wired = [typed.wire(payload, index) for index, payload in enumerate(payloads)]
    keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(wired)
    if len(keys) != len(wired):
        raise SubmitArgumentError(
            "idempotency_keys",
            f"{len(keys)} keys for {len(wired)} payloads; give one per payload (None for none)",
        )
    for index, key in enumerate(keys):
        _check_key(key, f"idempotency_keys[{index}]")
    if not wired:
        return []
    _check_durable(typed.app)
    client = typed.app.redis
    script = client.register_script(_ENQUEUE_LUA)
    ttl = typed.app.settings.idempotency_ttl_seconds
    with tracer().start_as_current_span(f"vox_flow.submit_many {typed.name}"):
        trace_id = current_trace_id()
        ids = [str(uuid.uuid4()) for _ in wired]
        messages = [
            _message(
                typed, item, task_id, {HEADER_KEY: key} if key else {}, None, None, level,
                batch=True,
            )
            for item, key, task_id in zip(wired, keys, ids, strict=True)
        ]  # fmt: skip
        with client.pipeline(transaction=True) as pipe:
            if not any(keys):
                # One LPUSH of the whole batch, in order (workers pop from the other end).
                pipe.lpush(messages[0].queue, *(built.message for built in messages))
                pipe.lpush(messages[0].bell, "1")  # wakes waiting consumers (transport.py)
                for built in messages:
                    if built.event is not None:
                        pipe.publish(*built.event)
                pipe.execute()
                replies: list[Any] = [b""] * len(wired)
            else:
                for built, key, task_id in zip(messages, keys, ids, strict=True):
                    script(
                        keys=[
                            built.queue,
                            idem_submit(typed.name, key) if key else "",
                            built.bell,
                        ],
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
    """The typed task to run, from ``task`` and ``app`` (checked: SubmitArgumentError)."""
    if app is not None and not isinstance(app, VoxFlow):
        raise SubmitArgumentError(
            "app", f"expected a VoxFlow app (vox_flow.app.create_app), got {type(app).__name__}"
        )
    if isinstance(task, TypedTask):
        if app is not None and app is not task.app:
            raise SubmitArgumentError("app", f"{task.name} is registered on another app")
        return task
    if not isinstance(task, str) or not task:
        raise SubmitArgumentError("task", f"expected a typed task or its name, got {_shown(task)}")
    if app is None:
        raise SubmitArgumentError(
            "app", "submit by task name needs the app: submit(name, payload, app=app)"
        )
    return lookup(app, task)


def _check_key(key: object, argument: str) -> None:
    """Refuse an idempotency key that would not dedupe what its caller expects."""
    if key is None:
        return
    if not isinstance(key, str):
        # 123 and "123" would be the same key once sent: refused, not converted.
        raise SubmitArgumentError(argument, f"expected a str (or None), got {_shown(key)}")
    if not key:
        # An empty key would silently disable deduplication.
        raise SubmitArgumentError(argument, "must not be empty (give None for no key)")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise SubmitArgumentError(
            argument,
            f"{len(key)} characters, at most {MAX_IDEMPOTENCY_KEY_LENGTH} allowed "
            "(hash a longer one)",
        )
    try:
        jsonvalue.check(key, field=argument)
    except JsonValueError as exc:
        raise SubmitArgumentError(argument, exc.reason) from None


def _check_delay(countdown: object, eta: object) -> float | None:
    """``countdown`` as seconds, once ``countdown`` and ``eta`` are known to be usable."""
    if countdown is not None and eta is not None:
        raise SubmitArgumentError("countdown", "give countdown or eta, not both")
    if eta is not None:
        if not isinstance(eta, datetime):
            raise SubmitArgumentError(
                "eta", f"expected a datetime with a timezone, got {_shown(eta)}"
            )
        if eta.utcoffset() is None:
            # A naive time means "local" to one reader and UTC to another: refused.
            raise SubmitArgumentError(
                "eta", "a naive datetime is ambiguous; give its timezone, e.g. tzinfo=UTC"
            )
        return None
    if countdown is None:
        return None
    if isinstance(countdown, bool) or not isinstance(countdown, (Real, Decimal)):
        raise SubmitArgumentError(
            "countdown", f"expected a number of seconds, got {_shown(countdown)}"
        )
    try:
        seconds = float(countdown)
        if math.isfinite(seconds) and seconds >= 0:
            datetime.now(UTC) + timedelta(seconds=seconds)  # Celery adds it so, later
            return seconds
    except OverflowError:
        pass
    raise SubmitArgumentError(
        "countdown", f"must be a finite number >= 0 within year 9999, got {_shown(countdown)}"
    )


def _check_priority(priority: object) -> int | None:
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise SubmitArgumentError(
            "priority", f"expected an int from 0 to 9, got {_shown(priority)}"
        )
    if priority not in _PRIORITIES:
        raise SubmitArgumentError("priority", f"must be from 0 to 9, got {_shown(priority)}")
    return int(priority)


def _shown(value: object) -> str:
    """A bad argument as an error shows it: its type, and its value if short."""
    try:
        text = repr(value)
    except ValueError:  # an int past 4,300 digits has no repr
        text = ""
    return f"{type(value).__name__} {text}" if 0 < len(text) <= 40 else type(value).__name__
