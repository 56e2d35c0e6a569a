"""Schedule state in Redis: one hash per schedule, written only through fenced scripts.

Fields (times in epoch milliseconds): ``last_fire`` (latest fire dealt with), ``next_fire``,
``paused`` ("1"), ``paused_seq`` (the audit entry that set it), ``last_task_id``,
``pending`` (a fire claimed, maybe enqueued, not yet committed), ``buffered``
(overlap=buffer_one), ``token`` (fencing token of the last write).

A fire is *claimed* (fence checked; refused if already dealt with; skipped if paused), then
enqueued with its idempotency key, then *committed*. A leader that dies between claim and
commit leaves ``pending``: the next leader enqueues it again under the same key, which
enqueues nothing if the first one got through.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from vox_flow.contracts.schedule import ScheduleState
from vox_flow.keyspace import SCHED_FENCE as FENCE_KEY
from vox_flow.keyspace import SCHED_GENERATION as GENERATION_KEY
from vox_flow.keyspace import SCHED_STATE as PREFIX

if TYPE_CHECKING:
    from collections.abc import Iterable

    import redis

# KEYS: state. ARGV: "1" paused / "0" resumed, the audit entry's seq. Applies only an entry
# newer than the last applied one (``paused_seq``).
_SET_PAUSED_LUA = """
if tonumber(redis.call('HGET', KEYS[1], 'paused_seq') or '0') > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'paused', ARGV[1], 'paused_seq', ARGV[2])
return 1
"""

ClaimMode = Literal["fire", "skip", "buffer", "release"]
ClaimResult = Literal["ok", "fenced", "done", "paused", "skipped", "buffered"]

# KEYS: fence, state. ARGV: token, fire ms, mode.
_CLAIM_LUA = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 'fenced' end
local fire = tonumber(ARGV[2])
if ARGV[3] == 'release' then
  if tonumber(redis.call('HGET', KEYS[2], 'buffered') or '-1') ~= fire then return 'done' end
  if redis.call('HGET', KEYS[2], 'paused') == '1' then
    redis.call('HDEL', KEYS[2], 'buffered')
    return 'paused'
  end
  redis.call('HSET', KEYS[2], 'pending', ARGV[2], 'token', ARGV[1])
  return 'ok'
end
if tonumber(redis.call('HGET', KEYS[2], 'last_fire') or '-1') >= fire then return 'done' end
if redis.call('HGET', KEYS[2], 'paused') == '1' then
  redis.call('HSET', KEYS[2], 'last_fire', ARGV[2], 'token', ARGV[1])
  return 'paused'
end
if ARGV[3] == 'skip' then
  redis.call('HSET', KEYS[2], 'last_fire', ARGV[2], 'token', ARGV[1])
  return 'skipped'
end
if ARGV[3] == 'buffer' then
  redis.call('HSET', KEYS[2], 'last_fire', ARGV[2], 'buffered', ARGV[2], 'token', ARGV[1])
  return 'buffered'
end
redis.call('HSET', KEYS[2], 'pending', ARGV[2], 'token', ARGV[1])
return 'ok'
"""

# KEYS: fence, state. ARGV: token, fire ms, task id ('' when nothing was enqueued), next ms.
_COMMIT_LUA = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 'fenced' end
local fire = tonumber(ARGV[2])
if tonumber(redis.call('HGET', KEYS[2], 'last_fire') or '-1') < fire then
  redis.call('HSET', KEYS[2], 'last_fire', ARGV[2])
end
if tonumber(redis.call('HGET', KEYS[2], 'pending') or '-1') == fire then
  redis.call('HDEL', KEYS[2], 'pending')
end
if tonumber(redis.call('HGET', KEYS[2], 'buffered') or '-1') == fire then
  redis.call('HDEL', KEYS[2], 'buffered')
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'last_task_id', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'next_fire', ARGV[4]) end
redis.call('HSET', KEYS[2], 'token', ARGV[1])
return 'ok'
"""


def to_ms(when: datetime) -> int:
    """A UTC instant as epoch milliseconds (the stored form)."""
    return round(when.timestamp() * 1000)


def from_ms(value: bytes | str | None) -> datetime | None:
    """The stored form back to an aware UTC datetime."""
    if value is None or value == b"" or value == "":
        return None
    return datetime.fromtimestamp(int(value) / 1000, UTC)


def _state(name: str, raw: dict[bytes, bytes]) -> ScheduleState:
    token = raw.get(b"token")
    task_id = raw.get(b"last_task_id")
    return ScheduleState(
        name=name,
        last_fire=from_ms(raw.get(b"last_fire")),
        next_fire=from_ms(raw.get(b"next_fire")),
        paused=raw.get(b"paused") == b"1",
        last_task_id=task_id.decode() if task_id else None,
        pending_fire=from_ms(raw.get(b"pending")),
        buffered_fire=from_ms(raw.get(b"buffered")),
        token=int(token) if token else None,
    )


class ScheduleStore:
    """Reads and fenced writes of every schedule's state."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._claim = client.register_script(_CLAIM_LUA)
        self._commit = client.register_script(_COMMIT_LUA)
        self._set_paused = client.register_script(_SET_PAUSED_LUA)

    def states(self, names: Iterable[str]) -> dict[str, ScheduleState]:
        """The state of each named schedule (one pipelined round trip)."""
        names = list(names)
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(PREFIX + name)
            replies = pipe.execute()
        return {name: _state(name, raw) for name, raw in zip(names, replies, strict=True)}

    def state(self, name: str) -> ScheduleState:
        """The state of one schedule."""
        return self.states([name])[name]

    def baseline(self, marks: dict[str, datetime]) -> None:
        """For schedules with no state yet: fires up to the mark count as dealt with.

        HSETNX only writes what is missing, so a stale leader doing it changes nothing.
        """
        with self.client.pipeline(transaction=False) as pipe:
            for name, when in marks.items():
                pipe.hsetnx(PREFIX + name, "last_fire", to_ms(when))
            pipe.execute()

    def claim(self, token: int, name: str, fire: datetime, mode: ClaimMode) -> ClaimResult:
        """Claim ``fire`` for ``mode`` under ``token`` (see the module docstring)."""
        result = self._claim(keys=[FENCE_KEY, PREFIX + name], args=[token, to_ms(fire), mode])
        out: ClaimResult = result.decode()
        return out

    def commit(
        self, token: int, name: str, fire: datetime, task_id: str, next_fire: datetime | None
    ) -> bool:
        """Record ``fire`` as made (run ``task_id``); False when ``token`` is stale."""
        next_ms = "" if next_fire is None else str(to_ms(next_fire))
        result = self._commit(
            keys=[FENCE_KEY, PREFIX + name], args=[token, to_ms(fire), task_id, next_ms]
        )
        return bool(result == b"ok")

    def set_paused(self, name: str, paused: bool, seq: int | None = None) -> bool:
        """Pause or resume (idempotent; the leader reads it at every claim). ``seq``, the
        audit entry doing it: an entry older than the last one applied changes nothing (an
        outbox retry must not undo a later resume). Returns whether it applied."""
        if seq is None:
            self.client.hset(PREFIX + name, "paused", "1" if paused else "0")
            return True
        return bool(self._set_paused(keys=[PREFIX + name], args=["1" if paused else "0", seq]))

    def generation(self) -> int:
        """The definitions' reload counter (bumped by ``reload``)."""
        value = self.client.get(GENERATION_KEY)
        return int(value) if value else 0

    def bump_generation(self) -> int:
        """Ask every replica to reload its definitions."""
        return int(self.client.incr(GENERATION_KEY))
