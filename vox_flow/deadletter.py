"""The dead-letter store: tasks that could not succeed, kept for inspection, replay or purge.

A dead letter's id is its task's id, so a worker that writes the same dead letter twice (it died
after writing, before acknowledging) leaves one entry. Each entry is a Redis hash: the
immutable ``entry`` JSON plus its replay state; ``vf:dlq:index`` orders them by time.

Replay is a small state machine (dead -> replaying -> replayed) whose first step also fixes the
new task id and payload. A replay interrupted after that step is finished by the next call with
the same task id, and the run carries an idempotency key, so replaying twice runs the task once.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis

from vox_flow.contracts.task import DeadLetter, DeadLetterState
from vox_flow.errors import VoxFlowError

if TYPE_CHECKING:
    from vox_flow.app import VoxFlow
    from vox_flow.contracts.audit import AuditEntry
    from vox_flow.control.actions import Effects
    from vox_flow.submit import TaskHandle

# The operator actions on dead letters, as named in audit entries.
REPLAY, PURGE = "deadletter.replay", "deadletter.purge"

_ENTRY = "vf:dlq:"
_INDEX = INDEX_KEY = "vf:dlq:index"


def entry_key(letter_id: str) -> str:
    return _ENTRY + letter_id


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


class DeadLetterStore:
    """Dead letters in the broker's Redis."""

    def __init__(self, app: VoxFlow) -> None:
        self.app = app
        self.client: redis.Redis = app.redis
        self._begin_replay = self.client.register_script(_BEGIN_REPLAY_LUA)

    def add(self, letter: DeadLetter, pipe: redis.client.Pipeline | None = None) -> None:
        """Store a dead letter (once: a second add of the same id changes nothing)."""
        target = pipe if pipe is not None else self.client.pipeline()
        key = _ENTRY + letter.id
        target.hsetnx(key, "entry", letter.model_dump_json())
        target.hsetnx(key, "state", DeadLetterState.DEAD.value)
        target.zadd(_INDEX, {letter.id: letter.dead_at.timestamp()}, nx=True)
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

    def replay(
        self, letter_id: str, payload: Mapping[str, Any] | None = None
    ) -> tuple[TaskHandle[Any], bool]:
        """Enqueue the task again (with an edited payload if given).

        The edited payload is validated first: an invalid one raises PayloadError and changes
        nothing. Returns the handle and whether this call started the replay (False: it had
        been replayed, or started, before; the same task id is used).
        """
        from vox_flow.submit import publish
        from vox_flow.tasks import lookup

        letter = self.get(letter_id)
        typed = lookup(self.app, letter.task_name)
        model = typed.validate(letter.payload if payload is None else payload)
        replies: list[bytes] = self._begin_replay(
            keys=[_ENTRY + letter_id],
            args=[str(uuid.uuid4()), model.model_dump_json(), _now().isoformat()],
        )
        state, task_id, payload_json = (part.decode() for part in replies)
        if state == "missing":
            raise DeadLetterNotFound(letter_id)
        if state != DeadLetterState.REPLAYED.value:
            # 'started', or a replay a crash left half-done: (re)publish the same run. The key
            # makes a second publish of it harmless.
            handle = publish(
                typed,
                typed.validate(json.loads(payload_json)),
                task_id=task_id,
                effect_key=letter.idempotency_key or f"dlq:{letter.id}",
            )
            self.client.hset(_ENTRY + letter_id, "state", DeadLetterState.REPLAYED.value)
            return handle, state == "started"
        from vox_flow.submit import TaskHandle

        return TaskHandle(self.app, task_id, typed.output_model), False

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

    def prune(self, older_than: datetime, batch: int = 500) -> int:
        """Delete dead letters that died before ``older_than`` (the retention rule)."""
        cutoff = f"({older_than.timestamp()}"
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


def deadletter_effects(app: VoxFlow, outcomes: dict[int, Any] | None = None) -> Effects:
    """The outside effects of the dead-letter actions, each idempotent (the outbox needs it).

    ``outcomes``, when given, receives each effect's result by audit entry seq: for a replay
    ``(task id, started)`` or None when the dead letter was gone; for a purge the ids deleted.
    """
    from vox_flow.control.actions import Effects  # lazily: workers never need the store

    effects = Effects()
    store = DeadLetterStore(app)
    sink: dict[int, Any] = {} if outcomes is None else outcomes

    @effects.outside(REPLAY)
    def _replay(entry: AuditEntry) -> None:
        try:
            handle, started = store.replay(entry.target, entry.payload_data().get("payload"))
        except DeadLetterNotFound:
            sink[entry.seq] = None  # purged since: nothing left to replay
        else:
            sink[entry.seq] = (handle.id, started)

    @effects.outside(PURGE)
    def _purge(entry: AuditEntry) -> None:
        deleted = []
        for letter_id in entry.payload_data()["ids"]:
            with contextlib.suppress(DeadLetterNotFound):
                store.purge(letter_id)
                deleted.append(letter_id)
        sink[entry.seq] = deleted

    return effects
