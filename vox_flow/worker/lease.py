"""Leases on reserved messages: how a dead worker's messages come back within a minute.

Celery on Redis redelivers a reserved message only after kombu's ``visibility_timeout`` (one
hour by default), and a short timeout makes long tasks run twice. vox_flow instead treats the
score kombu gives each reserved message in ``unacked_index`` (the time it was reserved) as a
lease: every live worker renews the leases of the messages it holds every
``lease_renew_seconds``, and every worker takes back messages whose lease is older than
``lease_seconds`` (settle.py). A worker that dies stops renewing, so its messages are back
on their queues at most ``lease_seconds + reaper_interval_seconds`` after its death (35 s with
the defaults), however long its tasks run. The keeper thread of the worker runtime
(runtime.py) calls :meth:`LeaseKeeper.keep`; the lease step (install.py) attaches the
messages the consumer holds.

Limits: node clocks must agree within a few seconds (scores are wall-clock times, as kombu
writes them); a worker frozen for longer than ``lease_seconds`` (SIGSTOP, swap storm) loses its
messages to others, so they may run twice — delivery is at-least-once, effects are once per
idempotency key. A message taken back ``lease_takeback_limit`` times is dead-lettered
(settle.py), so a task that takes its whole host down does not loop forever.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import redis
from celery import bootsteps

from vox_flow._celery.delivered import delivered, tags
from vox_flow._celery.layout import layout
from vox_flow.worker.runtime import WorkerRuntime
from vox_flow.worker.settle import expired, settle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from vox_flow.application import VoxFlow

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews this worker's leases and takes back expired ones (called by the keeper thread)."""

    def __init__(
        self,
        app: VoxFlow,
        held: Callable[[], Iterable[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.held = held
        self.clock = clock
        self._reaped_at: float | None = None

    def keep(self) -> None:
        """Renew, then reap when ``reaper_interval_seconds`` passed since the last reap.

        A renewal that raises skips the reap: this worker's own leases may be stale, and it
        would take back messages it is running.
        """
        self.renew()
        now = self.clock()
        interval = self.app.settings.reaper_interval_seconds
        if self._reaped_at is None or now - self._reaped_at >= interval:
            self._reaped_at = now
            self.reap()

    def renew(self) -> int:
        """Push the lease of every message this worker holds to now; returns how many."""
        tags = list(self.held())
        if tags:
            now = time.time()
            # XX: never resurrect a tag that was acknowledged meanwhile.
            self.app.redis.zadd(layout(self.app).unacked_index, dict.fromkeys(tags, now), xx=True)
        return len(tags)

    def reap(self) -> int:
        """Take back messages whose lease lapsed (their worker is gone): requeued, or
        dead-lettered at their take-back limit. Returns how many were requeued."""
        deadline = time.time() - self.app.settings.lease_seconds
        outcomes = []
        for tag in expired(self.app, deadline):
            try:
                outcomes.append(settle(self.app, tag, lost=False))
            except redis.RedisError:
                raise  # the broker: this round is over, the keeper tries again
            except Exception:
                # One message vox_flow cannot settle (a plain task sent through a named
                # exchange, say) must not stop every later take-back: kombu's own
                # visibility timeout is left to deliver it again.
                log.exception("cannot take back message %s; leaving it to kombu", tag)
        count, dead = outcomes.count("requeued"), outcomes.count("dead_lettered")
        if count:
            log.warning("took back %d message(s) whose worker stopped renewing", count)
        if dead:
            log.error(
                "dead-lettered %d message(s) taken back %d times (their task takes its "
                "worker down?)",
                dead,
                self.app.settings.lease_takeback_limit,
            )
        return count


class LeaseStep(bootsteps.StartStopStep):
    """Consumer bootstep: while the task consumer runs, this process's worker runtime keeps
    ``keeper`` (the leases of the messages the consumer holds) in its keeper thread."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.keeper: LeaseKeeper | None = None

    def start(self, parent: Any) -> None:
        app: VoxFlow = parent.app
        held = delivered(parent)
        self.keeper = LeaseKeeper(app, lambda: tags(held))
        WorkerRuntime.of(app).attach(held, self.keeper)

    def stop(self, parent: Any) -> None:
        if self.keeper is not None:
            WorkerRuntime.of(parent.app).detach()
            self.keeper = None

    shutdown = stop
