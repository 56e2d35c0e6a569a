"""Idempotency keys in workers: one completed effect per key (submit.py dedups enqueues).

A key is scoped to its task (``keyspace.scoped_key(task_name, key)``): the same key given to
two tasks names two effects. Every method here takes the *scoped* key.

Delivery is at-least-once. A run of a keyed task first *claims* its key; a claim is a short
lease renewed while the run is alive (by its app's worker runtime, worker/runtime.py), so a
dead run's claim lapses within one lease. A completed run stores its result under the key;
any later delivery with that key returns the stored result without running the function again.

The store remembers, for each claim this process took, when it was last known held (claimed,
or renewed by its token): :meth:`IdempotencyStore.complete_while_held` retries storing a
completion through a broker outage until the claim could have lapsed, and no longer.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import redis

from vox_flow.keyspace import IDEM_CLAIM as _CLAIM
from vox_flow.keyspace import IDEM_DONE as _DONE

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

# Storing a completion that meets a broker error: first wait, doubling up to the cap.
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1.0
REPORT_EVERY = 5.0  # seconds between warnings while it keeps failing

# KEYS: done, claim. ARGV: token, lease_ms.
_CLAIM_LUA = """
local done = redis.call('GET', KEYS[1])
if done then return {'done', done} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'claimed', ''} end
return {'busy', redis.call('GET', KEYS[2]) or ''}
"""

# KEYS: done, claim. ARGV: token, result, ttl_s. Completes only if this run still holds the claim.
_COMPLETE_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: claim. ARGV: token.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Compare-and-extend. KEYS: claims. ARGV: lease_ms, then one token per claim. Returns one
# 1/0 per claim: extended, or left alone (lapsed, or another run holds it now).
_RENEW_LUA = """
local held = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""


@dataclass(frozen=True)
class Claim:
    """What claiming a key found: ``claimed`` (run it), ``done`` (result stored), ``busy``."""

    state: Literal["claimed", "done", "busy"]
    value: str = ""


class CompletionNotStored(Exception):
    """A run's completion could not be stored before its claim could lapse."""

    def __init__(self, key: str, waited: float, error: BaseException) -> None:
        super().__init__(
            f"could not store the completion of idempotency key {key!r} for {waited:.1f}s, "
            f"until its claim could lapse ({type(error).__name__}: {error})"
        )
        self.key = key


class IdempotencyStore:
    """Effect-side idempotency records in the broker's Redis (keys are scoped keys)."""

    def __init__(
        self,
        client: redis.Redis,
        ttl: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.clock = clock
        self.sleep = sleep
        self._claim = client.register_script(_CLAIM_LUA)
        self._complete = client.register_script(_COMPLETE_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        # Scoped key -> (token, when it was last known held by that token), on self.clock.
        self._held_at: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def claim(self, key: str, token: str, lease_seconds: float) -> Claim:
        """Claim the effect of ``key`` for the run ``token``."""
        asked = self.clock()
        state, value = self._claim(
            keys=[_DONE + key, _CLAIM + key], args=[token, int(lease_seconds * 1000)]
        )
        claim = Claim(state.decode(), value.decode())
        if claim.state == "claimed":
            with self._lock:
                self._held_at[key] = (token, asked)
        return claim

    def complete(self, key: str, token: str, result: str) -> bool:
        """Store the key's result and drop the claim; False if another run completed first."""
        done = self._complete(keys=[_DONE + key, _CLAIM + key], args=[token, result, self.ttl])
        self._forget(key, token)
        return bool(done)

    def complete_while_held(self, key: str, token: str, result: str, lease_seconds: float) -> bool:
        """:meth:`complete`, tried again with backoff on a Redis error for as long as this
        run's claim may still be held (``lease_seconds`` since it was last known held: claimed
        or renewed). Raises CompletionNotStored once it could have lapsed."""
        delay, reported = BACKOFF_FIRST, None
        while True:
            try:
                done = self.complete(key, token, result)
            except redis.RedisError as exc:
                now = self.clock()
                left = self.held_since(key, token) + lease_seconds - now
                if left <= 0:
                    self._forget(key, token)
                    raise CompletionNotStored(key, lease_seconds - left, exc) from exc
                if reported is None or now - reported >= REPORT_EVERY:
                    reported = now
                    log.warning(
                        "cannot store the completion of idempotency key %r (%s: %s); waiting "
                        "for the broker, trying again for up to %.1fs while the claim may be held",
                        key,
                        type(exc).__name__,
                        exc,
                        left,
                    )
                self.sleep(min(delay, left))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if reported is not None:
                log.warning("stored the completion of idempotency key %r after all", key)
            return done

    def held_since(self, key: str, token: str) -> float:
        """When (on this store's clock) the claim on ``key`` was last known held by ``token``;
        minus infinity when this store never saw it held."""
        with self._lock:
            held = self._held_at.get(key)
        return held[1] if held is not None and held[0] == token else float("-inf")

    def release(self, key: str, token: str) -> None:
        """Drop this run's claim (the run failed; a retry will claim again)."""
        self._release(keys=[_CLAIM + key], args=[token])
        self._forget(key, token)

    def renew(self, claims: dict[str, str], lease_seconds: float) -> set[str]:
        """Extend the leases of the claims (key -> token) still held by their tokens, in one
        step; a claim another run holds now is left alone. Returns the keys extended."""
        if not claims:
            return set()
        keys = list(claims)
        asked = self.clock()
        replies = self._renew(
            keys=[_CLAIM + key for key in keys],
            args=[int(lease_seconds * 1000), *(claims[key] for key in keys)],
        )
        held = {key for key, reply in zip(keys, replies, strict=True) if reply}
        with self._lock:
            for key in held:
                # Only claims still tracked: one completed meanwhile must not come back.
                if self._held_at.get(key, ("",))[0] == claims[key]:
                    self._held_at[key] = (claims[key], asked)
        return held

    def _forget(self, key: str, token: str) -> None:
        with self._lock:
            if self._held_at.get(key, ("",))[0] == token:
                del self._held_at[key]
