"""A solo worker that monitors (Flower) see live while a run blocks its event loop.

Celery's solo pool runs each task inside the consumer's event loop, and two things a monitor
needs are sent from that loop only:

* task events: the consumer's event dispatcher buffers the ``task`` group when the worker has
  an event loop (``celery.worker.consumer.events.Events``: ``buffer_group=['task']``) and the
  loop flushes the buffer, so ``task-received`` and ``task-started`` left when the run ended;
* worker heartbeats: ``celery.worker.heartbeat.Heart`` runs on the loop's timer, so a run
  longer than two heartbeat periods showed the worker offline (a monitor expires a worker
  ``freq * 2`` seconds after its last heartbeat: ``celery.events.state``).

:meth:`Liveness.keep`, called every fraction of a second from another thread (the worker
runtime's keeper), does the loop's part while a run is active (``celery.worker.state``
counts it from its acceptance to its end, as Heart's ``active``): it publishes the task events
the consumer's dispatcher buffered (taken under the dispatcher's own lock, as its ``flush``
takes them), and sends ``worker-heartbeat`` with the fields Heart sends. When the loop is
free, Celery does both itself. Nothing is added to a run: short runs cost nothing, and a run
shows STARTED on its worker within one call of ``keep`` after it began.

What ``keep`` sends goes over a connection of its own: a kombu connection is used by one
thread only.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from celery.concurrency.solo import TaskPool as SoloPool
from celery.utils.sysinfo import load_average
from celery.worker import state

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

HEARTBEAT = "worker-heartbeat"


def heartbeat_fields(interval: float) -> dict[str, Any]:
    """The fields of a ``worker-heartbeat`` as Celery's Heart sends them, counted now."""
    return {
        "freq": interval,
        "active": len(state.active_requests),
        "processed": state.all_total_count[0],
        "loadavg": load_average(),
        **state.SOFTWARE_INFO,
    }


def active_run() -> int | None:
    """A number that identifies the run in progress in this process, or None when no run is
    active (Celery counts a run active from its acceptance by the pool to its end)."""
    if not len(state.active_requests):
        return None
    return state.all_total_count[0]  # counts acceptances: a new run, a new number


def runs_in_loop(consumer: Any) -> bool:
    """Whether ``consumer``'s pool runs tasks inside its event loop (the solo pool)."""
    return isinstance(consumer.pool, SoloPool)


def heartbeat_interval(consumer: Any) -> float | None:
    """Seconds between the heartbeats of ``consumer``'s worker; None with heartbeats off."""
    heart = getattr(consumer, "heart", None)  # None with --without-heartbeat
    return None if heart is None else float(heart.interval)


def take_buffered(dispatcher: Any, producer: Any) -> int:
    """Publish the events ``dispatcher`` buffered through ``producer``, as its own ``flush``
    publishes them through its producer; returns how many were taken."""
    taken = 0
    with dispatcher.mutex:  # the loop's flush takes the same lock: no event goes twice
        if dispatcher._closed:
            return 0
        for group, events in dispatcher._group_buffer.items():
            if events:
                # A copy, and only what was copied is removed: the loop's thread may append.
                batch = list(events)
                dispatcher._publish(batch, producer, f"{group}.multi")
                del events[: len(batch)]
                taken += len(batch)
    return taken


class Liveness:
    """Does a solo consumer's loop's part for monitors while a run blocks that loop."""

    def __init__(
        self,
        consumer: Any,
        interval: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        active: Callable[[], int | None] = active_run,
    ) -> None:
        self.consumer = consumer
        self.interval = interval
        self.clock = clock
        self.active = active
        self._beat_at: float | None = None
        self._beat_run: int | None = None  # the run the last beat was sent in
        self._lock = threading.Lock()  # keep() against close()
        self._dispatcher: Any = None  # an EventDispatcher: its internals have no stubs
        self._closed = False

    @classmethod
    def of_consumer(cls, consumer: Any) -> Liveness | None:
        """The liveness of ``consumer``, or None when its pool leaves its loop free."""
        if not runs_in_loop(consumer):
            return None
        return cls(consumer, heartbeat_interval(consumer))

    def keep(self) -> None:
        """While a run is active: publish the consumer's buffered task events, and send a
        heartbeat if one is due. Raises what the broker raised (the next call connects anew).
        """
        run = self.active()
        if run is None:
            return  # the loop is free, or soon will be: Celery sends these itself
        consumer_dispatcher = self.consumer.event_dispatcher
        if consumer_dispatcher is None or not consumer_dispatcher.enabled:
            return  # events are off: the loop would not send them either
        with self._lock:
            if self._closed:
                return
            dispatcher = self._dispatcher or self._open()
            try:
                take_buffered(consumer_dispatcher, dispatcher.producer)
                interval = self.interval
                if interval is not None and self._due(run, interval):
                    # No retry: an outage must not hold this thread (it renews leases too).
                    dispatcher.send(HEARTBEAT, retry=False, **heartbeat_fields(interval))
                    self._beat_at, self._beat_run = self.clock(), run
            except Exception:
                self._drop()
                raise

    def close(self) -> None:
        """Send nothing more; close the connection (after a ``keep`` in progress)."""
        with self._lock:
            self._closed = True
            self._drop()

    def _due(self, run: int, interval: float) -> bool:
        # At once in a new run (the loop's last beat may be a period old), then every half
        # period: a monitor's expiry is two periods, so a late beat still arrives in time.
        if self._beat_at is None or self._beat_run != run:
            return True
        return self.clock() - self._beat_at >= interval / 2

    def _open(self) -> Any:
        app = self.consumer.app
        dispatcher = app.events.Dispatcher(
            app.connection_for_write(),
            hostname=self.consumer.hostname,
            enabled=True,
            buffer_while_offline=False,  # a beat that cannot go is stale: raise, never queue
        )
        self._dispatcher = dispatcher
        return dispatcher

    def _drop(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            connection = dispatcher.connection
            dispatcher.close()
            if connection is not None:
                try:
                    connection.close()
                except Exception:
                    log.debug("closing the liveness connection failed", exc_info=True)
