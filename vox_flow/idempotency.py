"""Idempotency keys in workers: one completed effect per key (submit.py dedups enqueues).

Delivery is at-least-once. A run of a keyed task first *claims* its key; a claim is a short
lease renewed while the run is alive (by its app's worker runtime, worker/runtime.py), so a
dead run's claim lapses within one lease. A completed run stores its result under the key;
any later delivery with that key returns the stored result without running the function again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from vox_flow.keyspace import IDEM_CLAIM as _CLAIM
from vox_flow.keyspace import IDEM_DONE as _DONE

if TYPE_CHECKING:
    import redis

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


@dataclass(frozen=True)
class Claim:
    """What claiming a key found: ``claimed`` (run it), ``done`` (result stored), ``busy``."""

    state: Literal["claimed", "done", "busy"]
    value: str = ""


class IdempotencyStore:
    """Submit-side and effect-side idempotency records in the broker's Redis."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self._claim = client.register_script(_CLAIM_LUA)
        self._complete = client.register_script(_COMPLETE_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def claim(self, key: str, token: str, lease_seconds: float) -> Claim:
        """Claim the effect of ``key`` for the run ``token``."""
        state, value = self._claim(
            keys=[_DONE + key, _CLAIM + key], args=[token, int(lease_seconds * 1000)]
        )
        return Claim(state.decode(), value.decode())

    def complete(self, key: str, token: str, result: str) -> bool:
        """Store the key's result and drop the claim; False if another run completed first."""
        done = self._complete(keys=[_DONE + key, _CLAIM + key], args=[token, result, self.ttl])
        return bool(done)

    def release(self, key: str, token: str) -> None:
        """Drop this run's claim (the run failed; a retry will claim again)."""
        self._release(keys=[_CLAIM + key], args=[token])

    def renew(self, claims: dict[str, str], lease_seconds: float) -> None:
        """Extend the leases of claims still held by live runs (key -> token)."""
        if not claims:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for key in claims:
                pipe.pexpire(_CLAIM + key, int(lease_seconds * 1000))
            pipe.execute()
