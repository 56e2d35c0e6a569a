"""The schedules' leader lock: one scheduler replica fires (vox_flow/leader.py).

Every schedule-state write the leader makes (store.py) carries its fencing token, and a
script refuses it unless the token is still the latest issued on ``FENCE_KEY`` — a leader
that was paused past its TTL and woke up cannot write, nor enqueue.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from vox_flow import leader
from vox_flow.keyspace import SCHED_FENCE as FENCE_KEY
from vox_flow.keyspace import SCHED_LEADER as LOCK_KEY

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis


class LeaderLock(leader.LeaderLock):
    """This scheduler replica's view of the schedules' leader lock."""

    def __init__(
        self,
        client: redis.Redis,
        ttl_seconds: float,
        replica: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            client,
            ttl_seconds,
            lock_key=LOCK_KEY,
            fence_key=FENCE_KEY,
            replica=replica,
            monotonic=monotonic,
        )
