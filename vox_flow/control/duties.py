"""What a control-service leader does during its term: a list of duties.

A :class:`Duty` has three hooks, each a no-op unless a subclass overrides it (the shape of
dramatiq's ``Middleware``). For each term, :class:`~vox_flow.control.service.ControlService`
calls ``begin`` of every duty in list order, then runs every duty's ``run`` in a thread of its
own until :attr:`Term.ending` is set, then, once every ``run`` has returned, calls ``end`` of
each duty that began, in reverse order. The same duty objects serve every term of a service.

What a hook may raise: :class:`~vox_flow.oplog.log.FencedOut` ends the term (a newer leader
claimed the op-log) and the replica stands by. Anything else ends the term and the service
(see service.py): a duty that can recover from an error, like a lost broker connection, does
so inside its own ``run``. An error from ``end`` is logged; the other ``end`` hooks still run.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from kombu.exceptions import OperationalError
from sqlalchemy import func, select

from vox_flow.actions import registry
from vox_flow.actions.perform import Resumed, resume_pending
from vox_flow.oplog.ingest import EventMapper, ingest
from vox_flow.oplog.log import FencedOut
from vox_flow.store import now_us
from vox_flow.store.rows import CheckpointRow

if TYPE_CHECKING:
    from collections.abc import Callable

    from vox_flow.application import VoxFlow
    from vox_flow.audit.keys import Signer
    from vox_flow.audit.log import AuditLog
    from vox_flow.contracts.audit import Checkpoint
    from vox_flow.oplog.log import OpLog
    from vox_flow.store import Store

log = logging.getLogger(__name__)

RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0


@dataclass(frozen=True)
class Term:
    """One leadership of the control service, as its duties see it."""

    token: int
    """The fencing token of this term: every op-log write carries it."""
    ending: threading.Event
    """Set when the term ends (stop, lost lock, a failed duty): every ``run`` returns soon
    after; the service waits for all of them before the ``end`` hooks."""
    leading: Callable[[], bool]
    """True while the lock is safely held (no network call: the service keeps the lock)."""
    app: VoxFlow
    store: Store
    oplog: OpLog
    audit: AuditLog
    signer: Signer


class Duty:
    """Something a leader does for as long as its term lasts. Every hook defaults to a no-op."""

    name: str = "duty"
    """For logs and the thread it runs in."""

    def begin(self, term: Term) -> None:
        """Called when a term starts, after the op-log is fenced and the ``begin`` of the
        duties listed before this one, and before any ``run``."""

    def run(self, term: Term) -> None:
        """The duty's loop, in a thread of its own: return once ``term.ending`` is set (the
        service waits for it). Returning earlier is allowed: the term goes on without it."""

    def end(self, term: Term) -> None:
        """Called once every ``run`` of the term has returned, if this duty's ``begin`` did."""


def connection_errors(app: VoxFlow) -> tuple[type[BaseException], ...]:
    """What a lost or unreachable broker raises: kombu's (the event receiver) and redis-py's
    (the leader lock, ``app.redis``)."""
    with app.connection_for_read() as probe:  # lazy: nothing connects here
        # ingest raises OperationalError when it cannot connect at all.
        errors = probe.connection_errors
    return (*errors, OperationalError, redis.ConnectionError, redis.TimeoutError)


class PeriodicDuty(Duty):
    """A duty whose ``run`` calls :meth:`step` every ``every`` seconds while the term lasts
    and the lock is held; a failing step is logged and tried again next period."""

    def __init__(self, every: float | None = None) -> None:
        self.every = every

    def period(self, term: Term) -> float:
        """Seconds between steps when none was given (a setting, by default)."""
        raise NotImplementedError

    def step(self, term: Term) -> object:
        """One period's work."""
        raise NotImplementedError

    def run(self, term: Term) -> None:
        every = self.every if self.every is not None else self.period(term)
        while not term.ending.wait(every):
            if not term.leading():
                return  # the term is ending: a deposed leader does nothing more
            try:
                self.step(term)
            except FencedOut:
                raise  # a newer leader: the term ends (the module docstring's rule)
            except Exception:
                log.exception("%s failed; trying again next period", self.name)


class OutboxDuty(PeriodicDuty):
    """At the start of a term, and then every ``every`` seconds (default
    ``control_outbox_retry_seconds``), run again every outside effect left pending in the
    audit outbox (by a crash, or an effect that failed: an unreachable broker, say)."""

    name = "outbox"

    def begin(self, term: Term) -> None:
        self.resume(term)

    def period(self, term: Term) -> float:
        return term.app.settings.control_outbox_retry_seconds

    def step(self, term: Term) -> Resumed:
        # Only rows untouched for a whole period: a row younger than that may belong to an
        # action whose CLI or API call is still running its effect.
        every = self.every if self.every is not None else self.period(term)
        return self.resume(term, untouched_since_us=now_us() - int(every * 1_000_000))

    def resume(self, term: Term, untouched_since_us: int | None = None) -> Resumed:
        """Run the pending effects, logging which ran and which failed again."""
        resumed = resume_pending(
            term.store, registry.effects(term.app), untouched_since_us=untouched_since_us
        )
        if resumed.done:
            log.info("outbox: finished the effects of audit entries %s", resumed.done)
        for seq, error in resumed.failed.items():
            log.error("outbox: the effect of audit entry %s failed again: %s", seq, error)
        return resumed


class CheckpointDuty(PeriodicDuty):
    """Every ``every`` seconds (default ``control_checkpoint_seconds``), sign a checkpoint of
    the audit log if it grew; a failed checkpoint is logged and tried again next period."""

    name = "checkpoints"

    def period(self, term: Term) -> float:
        return term.app.settings.control_checkpoint_seconds

    def step(self, term: Term) -> Checkpoint | None:
        return self.checkpoint_if_grown(term)

    @staticmethod
    def checkpoint_if_grown(term: Term) -> Checkpoint | None:
        """Sign a checkpoint of the audit log unless one already covers its current size."""
        with term.store.read() as conn:
            covered = conn.execute(select(func.max(CheckpointRow.size))).scalar_one()
        if term.audit.head().size <= (covered or 0):
            return None
        checkpoint = term.audit.checkpoint(term.signer)
        log.info("checkpoint: %s entries, root %s", checkpoint.size, checkpoint.root_hash)
        return checkpoint


class IngestDuty(Duty):
    """Turn Celery's events into op-log ops (:func:`vox_flow.oplog.ingest.ingest`), every
    write carrying the term's token; a lost broker is reconnected to with backoff."""

    name = "ingest"

    def __init__(self) -> None:
        self.mapper = EventMapper()

    def begin(self, term: Term) -> None:
        # Seeded from the op-log, so the nodes an earlier leader joined are not joined again.
        self.mapper = EventMapper.resuming(term.oplog.latest_state(), time.time())

    def run(self, term: Term) -> None:
        lost_connection = connection_errors(term.app)
        delay = RECONNECT_FIRST
        while not term.ending.is_set() and term.leading():
            subscribed = threading.Event()
            try:
                log.info("ingesting Celery events into the op-log")
                ingest(
                    term.app,
                    term.oplog,
                    stop=term.ending,
                    mapper=self.mapper,  # kept across reconnects: known nodes are not joined again
                    ready=subscribed,
                    fence=term.token,
                    leading=term.leading,
                )
            except lost_connection as error:
                if subscribed.is_set():  # it was working: events are lost until we are back
                    delay = RECONNECT_FIRST
                log.warning("broker connection lost (%s); reconnecting in %.1f s", error, delay)
                term.ending.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)


def default_duties() -> list[Duty]:
    """A leader's duties, in the order their ``begin`` runs: the outbox is resumed before
    ingest starts; checkpoints run beside it."""
    return [OutboxDuty(), IngestDuty(), CheckpointDuty()]
