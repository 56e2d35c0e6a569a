"""The dead-letter store: tasks that could not succeed, kept for inspection, replay or purge.

A dead letter's id is its task's id, so a worker that writes the same dead letter twice (it died
after writing, before acknowledging) leaves one entry. Each entry is a Redis hash: the
immutable ``entry`` JSON plus its replay state; ``vf:dlq:index`` orders them by time. This
module is the only writer of that format: :meth:`DeadLetterStore.writes` is the one definition
of a new entry (``add`` sends it; the settle step, worker/settle.py, runs it inside its
compare-and-move script), replay.py moves an entry through its states with
:meth:`DeadLetterStore.begin_replay` and :meth:`DeadLetterStore.mark_replayed`, and
:func:`build_letter` is the one place a ``DeadLetter`` is made.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vox_flow.contracts.task import Attempt, DeadLetter, DeadLetterReason, DeadLetterState
from vox_flow.errors import VoxFlowError
from vox_flow.keyspace import DLQ_ENTRY as _ENTRY
from vox_flow.keyspace import DLQ_INDEX as _INDEX

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Iterator

    import redis

# KEYS: entry hash. ARGV: task id, payload json, now.
# Returns {state, task id, payload json}; 'started' means this call moved it to replaying.
_BEGIN_REPLAY_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', '', ''} end
if state == 'dead' then
  redis.call('HSET', KEYS[1], 'state', 'replaying', 'replayed_task_id', ARGV[1],
             'replay_payload', ARGV[2], 'replayed_at', ARGV[3])
  return {'started', ARGV[1], ARGV[2]}
end
return {state, redis.call('HGET', KEYS[1], 'replayed_task_id'),
        redis.call('HGET', KEYS[1], 'replay_payload')}
"""


class DeadLetterNotFound(VoxFlowError, KeyError):
    """No dead letter has that id."""

    def __str__(self) -> str:
        return f"no dead letter with id {self.args[0]!r}"


def _now() -> datetime:
    return datetime.now(UTC)


def build_letter(
    *,
    task_id: str,
    task_name: str,
    queue: str,
    payload: Any,
    reason: DeadLetterReason,
    error_type: str,
    error_message: str,
    attempts: builtins.list[Attempt],
    node: str,
    trace_id: str | None,
    idempotency_key: str | None,
    traceback: str | None = None,
    dead_at: datetime | None = None,
) -> DeadLetter:
    """The dead letter of task ``task_id``.

    Its id is the task's id, so writing it twice leaves one entry; a payload that is not a
    JSON object is kept as ``{"value": payload}``; ``dead_at`` defaults to now.
    """
    return DeadLetter(
        id=task_id,
        task_id=task_id,
        task_name=task_name,
        queue=queue,
        payload=payload if isinstance(payload, dict) else {"value": payload},
        reason=reason,
        error_type=error_type,
        error_message=error_message,
        traceback=traceback,
        attempts=attempts,
        node=node,
        trace_id=trace_id,
        idempotency_key=idempotency_key,
        dead_at=dead_at or _now(),
    )


class DeadLetterStore:
    """Dead letters in the broker's Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._begin_replay = self.client.register_script(_BEGIN_REPLAY_LUA)

    @staticmethod
    def writes(letter: DeadLetter) -> builtins.list[tuple[str, ...]]:
        """The Redis commands (name, key, arguments…) that store ``letter``: set-if-absent,
        so running them again for the same id changes nothing."""
        key = _ENTRY + letter.id
        return [
            ("HSETNX", key, "entry", letter.model_dump_json()),
            ("HSETNX", key, "state", DeadLetterState.DEAD.value),
            ("ZADD", _INDEX, "NX", repr(letter.dead_at.timestamp()), letter.id),
        ]

    def add(self, letter: DeadLetter, pipe: redis.client.Pipeline | None = None) -> None:
        """Store a dead letter (once: a second add of the same id changes nothing)."""
        target = pipe if pipe is not None else self.client.pipeline()
        for command in self.writes(letter):
            target.execute_command(*command)  # type: ignore[no-untyped-call]
        if pipe is None:
            target.execute()

    def get(self, letter_id: str) -> DeadLetter:
        """One dead letter with its current replay state."""
        raw: dict[bytes, bytes] = self.client.hgetall(_ENTRY + letter_id)  # type: ignore[assignment]
        if not raw or b"entry" not in raw:
            raise DeadLetterNotFound(letter_id)
        return self._decode(raw)

    def list(self, limit: int = 100, offset: int = 0, task: str | None = None) -> list[DeadLetter]:
        """Dead letters, newest first, optionally only those of one task name."""
        out: list[DeadLetter] = []
        for letter in self._scan():
            if task is not None and letter.task_name != task:
                continue
            if offset:
                offset -= 1
                continue
            out.append(letter)
            if len(out) >= limit:
                break
        return out

    def count(self) -> int:
        """How many dead letters there are."""
        return int(self.client.zcard(_INDEX))

    def begin_replay(self, letter_id: str, task_id: str, payload_json: str) -> tuple[str, str, str]:
        """Move ``letter_id`` from dead to replaying, fixing the new run's id and payload.

        Returns ``(state, task id, payload json)``: state ``started`` when this call moved
        it (with the given id and payload), else the state it was in and the id and payload
        fixed by the call that started it. Raises DeadLetterNotFound.
        """
        replies: list[bytes] = self._begin_replay(
            keys=[_ENTRY + letter_id], args=[task_id, payload_json, _now().isoformat()]
        )
        state, run_id, fixed_payload = (part.decode() for part in replies)
        if state == "missing":
            raise DeadLetterNotFound(letter_id)
        return state, run_id, fixed_payload

    def replay_payload(self, letter_id: str) -> dict[str, Any] | None:
        """The payload a begun replay runs with (fixed by ``begin_replay``), None before."""
        raw = self.client.hget(_ENTRY + letter_id, "replay_payload")
        if raw is None:
            return None
        payload: dict[str, Any] = json.loads(raw)
        return payload

    def mark_replayed(self, letter_id: str) -> None:
        """The replay's run is enqueued: the letter is replayed for good."""
        self.client.hset(_ENTRY + letter_id, "state", DeadLetterState.REPLAYED.value)

    def ids(self) -> builtins.list[str]:
        """Every dead letter's id there is now, oldest first."""
        return [raw.decode() for raw in self.client.zrange(_INDEX, 0, -1)]  # type: ignore[union-attr]

    def purge(self, letter_id: str) -> None:
        """Delete one dead letter (atomically: the entry and its index row go together)."""
        with self.client.pipeline() as pipe:
            pipe.exists(_ENTRY + letter_id)
            pipe.delete(_ENTRY + letter_id)
            pipe.zrem(_INDEX, letter_id)
            existed, _, _ = pipe.execute()
        if not existed:
            raise DeadLetterNotFound(letter_id)

    def purge_all(self, batch: int = 500) -> int:
        """Delete every dead letter, a batch per transaction; returns how many were deleted."""
        return self._delete_until_none(lambda: self.client.zrange(_INDEX, 0, batch - 1))

    def prune(self, older_than: datetime, batch: int = 500, *, dry_run: bool = False) -> int:
        """Delete dead letters that died before ``older_than`` (the retention rule);
        ``dry_run``: count them, delete nothing."""
        cutoff = f"({older_than.timestamp()}"
        if dry_run:
            return int(self.client.zcount(_INDEX, "-inf", cutoff))
        return self._delete_until_none(
            lambda: self.client.zrangebyscore(_INDEX, "-inf", cutoff, start=0, num=batch)
        )

    def _delete_until_none(self, select: Callable[[], Any]) -> int:
        """Delete the ids ``select`` returns, a batch per transaction, until it returns none."""
        deleted = 0
        while ids := [raw.decode() for raw in select()]:
            with self.client.pipeline() as pipe:
                pipe.delete(*(_ENTRY + i for i in ids))
                pipe.zrem(_INDEX, *ids)
                pipe.execute()
            deleted += len(ids)
        return deleted

    def _scan(self, page: int = 200) -> Iterator[DeadLetter]:
        start = 0
        while True:
            ids: list[bytes] = self.client.zrevrange(_INDEX, start, start + page - 1)  # type: ignore[assignment]
            if not ids:
                return
            with self.client.pipeline(transaction=False) as pipe:
                for raw_id in ids:
                    pipe.hgetall(_ENTRY + raw_id.decode())
                rows = pipe.execute()
            for row in rows:
                if row and b"entry" in row:
                    yield self._decode(row)
            start += page

    @staticmethod
    def _decode(raw: dict[bytes, bytes]) -> DeadLetter:
        data = json.loads(raw[b"entry"])
        data["state"] = raw.get(b"state", b"dead").decode()
        if b"replayed_task_id" in raw:
            data["replayed_task_id"] = raw[b"replayed_task_id"].decode()
            data["replayed_at"] = raw[b"replayed_at"].decode()
        return DeadLetter.model_validate(data)
