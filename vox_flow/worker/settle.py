"""What happens to a reserved message whose run was lost.

A run is lost when its worker process dies (crash, SIGKILL, OOM), when it passes its hard
time limit, or when its worker stops renewing the message's lease (lease.py). The message is
still in kombu's ``unacked`` hash. One Lua script takes it out and, in the same step, either
puts it back at the front of its queue (with its attempt number raised when the run was
observed to die) or moves it to the dead-letter store once the task's attempts are used up.
The attempt record and the dead letter are written by their stores' own commands
(``AttemptLog.writes``, ``DeadLetterStore.writes``), run inside that script.
So a poison task that kills its worker every time ends in dead letters after
``max_attempts`` runs, and no message is ever in two places or in none.

A message taken back from a worker that stopped renewing (the whole worker or host died, and
nothing saw the run die) does not count an attempt: it may never have started. It counts a
take-back instead, and after ``lease_takeback_limit`` of them it is dead-lettered, so a task
that takes its whole host down is not retried without bound either (the rule of Sidekiq
Pro's super_fetch, which sends a job recovered three times to its morgue).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from vox_flow._celery.layout import decode_payload, layout
from vox_flow.contracts.task import (
    HEADER_ATTEMPT,
    HEADER_KEY,
    HEADER_TAKEBACKS,
    Attempt,
    AttemptOutcome,
    DeadLetter,
    DeadLetterReason,
)
from vox_flow.deadletters.store import build_letter
from vox_flow.errors import DeadLettered
from vox_flow.worker.runtime import WorkerRuntime

if TYPE_CHECKING:
    import redis

    from vox_flow.application import VoxFlow

# Compare-and-run: if field ARGV[1] of hash KEYS[1] still holds ARGV[2], run the commands
# that follow, else nothing. Command i has key KEYS[i + 1]; its name, its argument count
# and its arguments come next in ARGV, in order.
#
# A script rather than WATCH/MULTI/EXEC: kombu keeps every worker's reserved messages in one
# hash, so a WATCH on it is broken by any other worker's reserve or ack, and under load the
# transaction would be retried without bound. A script runs alone on the server, so the
# check, the move of the message and the stores' writes commit together or not at all: no
# message is ever in two places, or in none. The stores stay the only definition of their
# formats: settle runs the commands they give, it writes none of their keys itself.
_COMPARE_AND_RUN_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local a = 3
for i = 2, #KEYS do
  local n = tonumber(ARGV[a + 1])
  redis.call(ARGV[a], KEYS[i], unpack(ARGV, a + 2, a + 1 + n))
  a = a + 2 + n
end
return 1
"""

Outcome = Literal["requeued", "dead_lettered", "gone"]


def settle(
    app: VoxFlow,
    delivery_tag: str,
    *,
    lost: bool,
    error_type: str = "",
    error_message: str = "",
    node: str = "",
    started_at: datetime | None = None,
    count_takeback: bool = True,
) -> Outcome:
    """Take a reserved message back: requeue it, or dead-letter it once it is used up.

    ``lost`` says the run was seen to die (it counts as an attempt, up to the task's
    ``max_attempts``); otherwise the message lost its lease (it counts a take-back, up to
    ``lease_takeback_limit``), unless ``count_takeback`` is off: a message a dead child
    only held, given back by a supervisor that knows which run killed the child.
    """
    runtime = WorkerRuntime.of(app)
    client = app.redis
    where = layout(app)
    raw: bytes | None = client.hget(where.unacked, delivery_tag)  # type: ignore[assignment]
    if raw is None:
        return "gone"  # acknowledged, or taken back by someone else already
    message, exchange, routing_key = json.loads(raw)
    if exchange:
        raise RuntimeError(f"vox_flow routes through the default exchange, got {exchange!r}")
    headers = message.setdefault("headers", {})
    task_id, name = str(headers.get("id", delivery_tag)), str(headers.get("task", "?"))
    number = int(headers.get(HEADER_ATTEMPT, 1))
    typed = app.typed.get(name)
    ended = datetime.now(UTC)
    attempt: Attempt | None = None
    letter: DeadLetter | None = None
    taken_back = not lost and count_takeback
    takebacks = int(headers.get(HEADER_TAKEBACKS, 0)) + taken_back
    # Plain Celery tasks keep Celery's requeue-on-loss (no dead letters of theirs).
    if taken_back and typed is not None and takebacks >= app.settings.lease_takeback_limit:
        error_type = "LeaseExpired"
        error_message = (
            f"taken back {takebacks} times from workers that stopped renewing its lease "
            "while holding it: does it take its whole worker or host down?"
        )
        letter = _letter(runtime, message, task_id, routing_key, error_type, error_message, ended)
    elif taken_back:
        headers[HEADER_TAKEBACKS] = takebacks
    if lost:
        attempt = Attempt(
            number=number,
            node=node or app.settings.node_id,
            started_at=started_at or ended,
            ended_at=ended,
            outcome=AttemptOutcome.LOST,
            error_type=error_type,
            error_message=error_message,
        )
        if typed is not None and number >= typed.retry.max_attempts:
            letter = _letter(
                runtime, message, task_id, routing_key, error_type, error_message, ended, attempt
            )
        else:
            headers[HEADER_ATTEMPT] = number + 1
    writes: list[tuple[str, ...]] = [
        ("ZREM", where.unacked_index, delivery_tag),
        ("HDEL", where.unacked, delivery_tag),
    ]
    if attempt is not None:
        writes += runtime.attempts.writes(task_id, attempt)
    if letter is not None:
        writes += runtime.dead_letters.writes(letter)
    else:
        headers["redelivered"] = True
        message.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
        queue = where.queue(routing_key, message.get("properties", {}).get("priority"))
        writes.append(("RPUSH", queue, json.dumps(message)))
        writes.append(("LPUSH", where.bell(routing_key), "1"))  # wake a waiting consumer
    if not _compare_and_run(client, where.unacked, delivery_tag, raw, writes):
        return "gone"
    if letter is not None:
        exc = DeadLettered(task_id, error_type, error_message)
        try:
            app.backend.mark_as_failure(task_id, exc)
        finally:
            # Nobody else will say it failed (its process is gone): tell Flower and the
            # op-log, even when storing the failed state did not work.
            with app.events.default_dispatcher(hostname=node or app.settings.node_id) as events:
                events.send("task-failed", uuid=task_id, exception=repr(exc), traceback=None)
        return "dead_lettered"
    return "requeued"


def _compare_and_run(
    client: redis.Redis, hash_key: str, field: str, expected: bytes, writes: list[tuple[str, ...]]
) -> bool:
    """Run ``writes`` (name, key, arguments…) only if ``hash_key[field]`` is still
    ``expected``, all in one step; True if they ran."""
    keys = [hash_key] + [write[1] for write in writes]
    args: list[str | bytes] = [field, expected]
    for name, _, *rest in writes:
        args += [name, str(len(rest)), *rest]
    return bool(client.eval(_COMPARE_AND_RUN_LUA, len(keys), *keys, *args))


def _trace_id(headers: dict[str, Any]) -> str | None:
    """The W3C trace id of the message's ``traceparent`` header, if it has one."""
    parts = str(headers.get("traceparent", "")).split("-")
    return parts[1] if len(parts) == 4 else None


def _letter(
    runtime: WorkerRuntime,
    message: dict[str, Any],
    task_id: str,
    routing_key: str,
    error_type: str,
    error_message: str,
    ended: datetime,
    last: Attempt | None = None,
) -> DeadLetter:
    """The dead letter of a lost run: its recorded attempts, then ``last``; its trace id is
    the one the message carries (nobody ran it in a span to read it from)."""
    headers = message["headers"]
    earlier = runtime.attempts.list(task_id)
    return build_letter(
        task_id=task_id,
        task_name=str(headers.get("task", "?")),
        queue=routing_key,
        payload=decode_payload(message),
        reason=DeadLetterReason.LOST,
        error_type=error_type,
        error_message=error_message,
        attempts=[*earlier, last] if last is not None else earlier,
        node=last.node if last is not None else runtime.app.settings.node_id,
        trace_id=_trace_id(headers),
        idempotency_key=headers.get(HEADER_KEY),
        dead_at=ended,
    )


def expired(app: VoxFlow, older_than: float, limit: int = 100) -> list[str]:
    """Delivery tags whose lease was last renewed before the UNIX time ``older_than``."""
    tags: list[bytes] = app.redis.zrangebyscore(  # type: ignore[assignment]
        layout(app).unacked_index, "-inf", older_than, start=0, num=limit
    )
    return [tag.decode() for tag in tags]


__all__ = ["Outcome", "expired", "settle"]
