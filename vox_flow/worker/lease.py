"""Leases on reserved messages: how a dead worker's messages come back within a minute.

Celery on Redis redelivers a reserved message only after kombu's ``visibility_timeout`` (one
hour by default), and a short timeout makes long tasks run twice. vox_flow instead treats the
score kombu gives each reserved message in ``unacked_index`` (the time it was reserved) as a
lease: every live worker renews the leases of the messages it holds every
``lease_renew_seconds``, and every worker takes back messages whose lease is older than
``lease_seconds`` (settle.py). A worker that dies stops renewing, so its messages are back
on their queues at most ``lease_seconds + reaper_interval_seconds`` after its death (35 s with
the defaults), however long its tasks run.

Limits: node clocks must agree within a few seconds (scores are wall-clock times, as kombu
writes them); a worker frozen for longer than ``lease_seconds`` (SIGSTOP, swap storm) loses its
messages to others, so they may run twice — delivery is at-least-once, effects are once per
idempotency key. A message taken back ``lease_takeback_limit`` times is dead-lettered
(settle.py), so a task that takes its whole host down does not loop forever.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from celery import bootsteps

from vox_flow._celery.delivered import delivered, tags
from vox_flow._celery.layout import layout
from vox_flow.worker.settle import expired, settle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from vox_flow.application import VoxFlow

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews this worker's leases and takes back expired ones, in a background thread."""

    def __init__(self, app: VoxFlow, held: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self.held = held
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vf-leases", daemon=True)
        self._last_reap = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

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
        outcomes = [settle(self.app, tag, lost=False) for tag in expired(self.app, deadline)]
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

    def _loop(self) -> None:
        settings = self.app.settings
        while not self._stop.wait(settings.lease_renew_seconds):
            try:
                self.renew()
                if time.monotonic() - self._last_reap >= settings.reaper_interval_seconds:
                    self._last_reap = time.monotonic()
                    self.reap()
            except Exception:
                log.exception("lease renewal failed; will try again")


class LeaseStep(bootsteps.StartStopStep):
    """Consumer bootstep running a LeaseKeeper next to the task consumer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.keeper: LeaseKeeper | None = None

    def start(self, parent: Any) -> None:
        held = delivered(parent)
        self.keeper = LeaseKeeper(parent.app, lambda: tags(held))
        writer = getattr(parent.app, "slot_writer", None)
        if writer is not None:
            writer.held = held  # a supervised child also reports what it holds
        self.keeper.start()

    def stop(self, parent: Any) -> None:
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None

    shutdown = stop
