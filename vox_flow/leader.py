"""The leader lock: one replica of a role leads; each leadership gets a larger fencing token.

Acquiring is one Redis script: ``SET lock NX PX ttl`` and, when it was free, ``INCR`` of the
fence counter, the new token written into the lock's value. Each role (schedules, the control
service) has its own pair of keys. Every state write a leader makes carries its token, and the
place written to refuses a token older than the latest it has seen, so a leader that was
paused past its TTL and woke up cannot write.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis

# KEYS: lock, fence. ARGV: replica id, ttl ms. Returns the new token, or 0 when held.
_ACQUIRE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'NX', 'PX', ARGV[2])
return token
"""

# KEYS: lock. ARGV: value, ttl ms.
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lock. ARGV: value.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: fence. ARGV: floor. Never lowers the counter.
_RAISE_FENCE_LUA = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('GET', KEYS[1])
"""

# A leader stops trusting its lock this share of the TTL early: the server's clock decides
# when the lock lapses, and the request that renewed it took some time to arrive.
_SAFETY = 0.1


class LeaderLock:
    """This replica's view of one role's leader lock (``token`` is set while it leads)."""

    def __init__(
        self,
        client: redis.Redis,
        ttl_seconds: float,
        *,
        lock_key: str,
        fence_key: str,
        replica: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl_ms = int(ttl_seconds * 1000)
        self.lock_key = lock_key
        self.fence_key = fence_key
        # host:pid:random, so an operator (or a test) can tell which process leads.
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.token: int | None = None
        self._monotonic = monotonic
        self._valid_until = 0.0
        self._renewed_at = 0.0
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._raise_fence = client.register_script(_RAISE_FENCE_LUA)

    @property
    def value(self) -> str:
        return f"{self.replica} {self.token}"

    def leading(self) -> bool:
        """True while this replica holds the lock and its TTL has safely not run out."""
        return self.token is not None and self._monotonic() < self._valid_until

    def _trust(self, sent_at: float) -> None:
        self._renewed_at = sent_at
        self._valid_until = sent_at + self.ttl_ms / 1000 * (1 - _SAFETY)

    def try_acquire(self) -> int | None:
        """Take the lock if it is free; returns the new fencing token, or None."""
        sent_at = self._monotonic()
        token = int(
            self._acquire(keys=[self.lock_key, self.fence_key], args=[self.replica, self.ttl_ms])
        )
        if not token:
            return None
        self.token = token
        self._trust(sent_at)
        return token

    def keep(self) -> bool:
        """Renew the lock when a fifth of its TTL has passed; False once it is lost."""
        if self.token is None:
            return False
        now = self._monotonic()
        if now - self._renewed_at < self.ttl_ms / 5000:
            return self.leading()
        if now < self._valid_until and self._renew(
            keys=[self.lock_key], args=[self.value, self.ttl_ms]
        ):
            self._trust(now)
            return True
        self.token = None
        return False

    def release(self) -> None:
        """Give the lock up (on shutdown), so another replica takes over at once."""
        if self.token is not None:
            self._release(keys=[self.lock_key], args=[self.value])
            self.token = None

    def raise_fence(self, floor: int) -> None:
        """Make every later token larger than ``floor``, a token the fenced place has seen:
        after Redis lost the counter (a fresh server), new leaders would be refused forever."""
        self._raise_fence(keys=[self.fence_key], args=[floor])

    def holder(self) -> str | None:
        """The current holder's ``"replica token"``, if any replica leads."""
        value = self.client.get(self.lock_key)
        if isinstance(value, bytes):
            return value.decode()
        return value
