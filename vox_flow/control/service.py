"""The control service (``vox-flow control``): the process that keeps the control store.

Any number of replicas may run against one broker and store; one leads. A replica stands by
until it takes the leader lock (vox_flow/leader.py, keys ``vf:control:leader`` and
``vf:control:fence``). For as long as it leads (a *term*) it:

1. claims the op-log with its fencing token (:meth:`OpLog.fence`) before anything else, so
   an earlier leader that wakes up from a pause can no longer add ops, and every duty's
   writes are fenced from then on;
2. calls ``begin`` of each of its duties (vox_flow/control/duties.py), in order: by default
   the outbox runs again every outside effect a crash left pending, then the op-log ingest
   seeds its event mapper from the op-log, so nodes already joined are not joined again;
3. runs each duty's loop in a thread of its own: by default the ingest turns Celery's
   events into op-log ops (:func:`vox_flow.oplog.ingest.ingest`), every write carrying the
   token, and checkpoints sign the audit log every ``control_checkpoint_seconds`` when it
   grew;
4. meanwhile keeps the lock from its own thread (renewed every fifth of the TTL), while the
   duties only ask whether it is still held (:meth:`LeaderLock.leading`, no network call).

The term ends when :attr:`stop` is set (SIGTERM/SIGINT in ``vox-flow control``), when the
lock is lost, or when a duty fails: :attr:`Term.ending` is set, every duty's loop returns,
the ``end`` hooks run, and the lock is released if still held, so a standby takes over at
its next poll. A write refused by the op-log's fence (:class:`FencedOut`, from any duty)
ends the term and the replica stands by again. Any other exception from a duty ends the
term *and the service*: it is logged, the lock released and the exception raised from
:meth:`ControlService.run`, for the supervisor to restart the process; a duty is not
restarted in-process, because a leader that holds the lock while one duty is dead (no
ingest, say) loses ops silently. A duty that can recover from an error (a lost broker, a
failed checkpoint) does so inside its own loop.

A leader that dies holding the lock is replaced once the lock's TTL
(``control_leader_ttl_seconds``) has run out, within one standby poll (a tenth of the TTL).
Celery's events are fire-and-forget: events sent while no leader listens (a dead leader's
remaining TTL, the new one's start-up, a broker reconnect) are not in the op-log. A lost
broker connection is retried with backoff (the lock is kept if it comes back within the
TTL); a store error ends the service rather than dropping ops silently.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import redis

from vox_flow.audit.keys import CONTROL_KEY, key_path, load_or_create
from vox_flow.audit.log import AuditLog
from vox_flow.control.duties import (
    RECONNECT_FIRST,
    RECONNECT_MAX,
    Term,
    connection_errors,
    default_duties,
)
from vox_flow.keyspace import CONTROL_FENCE, CONTROL_LEADER
from vox_flow.leader import LeaderLock
from vox_flow.oplog.log import FencedOut, OpLog
from vox_flow.store import Store, open_store

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vox_flow.application import VoxFlow
    from vox_flow.control.duties import Duty

log = logging.getLogger(__name__)

LOCK_KEY, FENCE_KEY = CONTROL_LEADER, CONTROL_FENCE

# A standby tries the lock this many times per TTL: a leader that died is replaced within
# the time its lock had left plus one poll, for one cheap Redis call per poll.
STANDBY_POLLS_PER_TTL = 10
# How often a leader looks at its lock (renewed only every fifth of the TTL) and at its
# duties' threads; a stop is seen at once.
WATCH_SECONDS = 0.1


class _Failure(Exception):
    """A duty's exception, raised by the term once it has ended."""

    def __init__(self, duty: Duty, error: Exception) -> None:
        super().__init__(duty.name, error)
        self.duty, self.error = duty, error


class ControlService:
    """One replica of the control store's keeper: stands by, or leads and runs its duties
    (default: outbox, op-log ingest, checkpoints) while it holds the leader lock."""

    def __init__(
        self,
        app: VoxFlow,
        store: Store | None = None,
        lock: LeaderLock | None = None,
        duties: Sequence[Duty] | None = None,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.stop = threading.Event()
        self.store = store or open_store(self.settings)
        self.signer = load_or_create(key_path(self.settings.data_dir, CONTROL_KEY), CONTROL_KEY)
        self.audit = AuditLog(self.store)
        self.audit.register(self.signer)
        self.oplog = OpLog(self.store)
        self.duties: list[Duty] = list(duties) if duties is not None else default_duties()
        ttl = self.settings.control_leader_ttl_seconds
        self.lock = lock or LeaderLock(app.redis, ttl, lock_key=LOCK_KEY, fence_key=FENCE_KEY)
        self.poll_seconds = ttl / STANDBY_POLLS_PER_TTL
        self._lost_connection = connection_errors(app)

    def run(self) -> int:
        """Stand by or lead, as the lock decides, until :attr:`stop` is set; exit code.

        Raises what a duty raised other than :class:`FencedOut`, once the lock is released."""
        delay = RECONNECT_FIRST
        standing_by = False
        try:
            while not self.stop.is_set():
                try:
                    token = self.lock.try_acquire()
                    holder = None if token is not None else self.lock.holder()
                except self._lost_connection as error:
                    log.warning("broker unreachable (%s); trying again in %.1f s", error, delay)
                    self.stop.wait(delay)
                    delay = min(delay * 2, RECONNECT_MAX)
                    continue
                delay = RECONNECT_FIRST
                if token is None:
                    if not standing_by:
                        leader = holder or "another replica"
                        log.info("standing by: the control service is led by %s", leader)
                        standing_by = True
                    self.stop.wait(self.poll_seconds)
                    continue
                standing_by = False
                self._lead(token)
        finally:
            self.stop.set()
            with contextlib.suppress(redis.RedisError):
                self.lock.release()  # a standby takes over at its next poll
            self.store.dispose()
        log.info("control service stopped")
        return 0

    def _lead(self, token: int) -> None:
        """One term: fence the op-log, begin the duties, run them until stop is set, the
        lock is lost or a duty fails; then end them. Raises a duty's error other than
        :class:`FencedOut`, with :attr:`stop` set."""
        log.info("leading the control service with fencing token %s", token)
        term = Term(
            token=token,
            ending=threading.Event(),
            leading=self.lock.leading,
            app=self.app,
            store=self.store,
            oplog=self.oplog,
            audit=self.audit,
            signer=self.signer,
        )
        try:
            self.oplog.fence(token)
            self._serve(term)
        except FencedOut as error:
            log.warning("stepping down: %s", error)
            # Normally a newer leader; but after Redis lost its fence counter every new
            # token would be refused: make the next one larger than any the store has seen.
            with contextlib.suppress(redis.RedisError):
                self.lock.raise_fence(error.latest)
        except _Failure as failure:
            cause = failure.error
            log.error("the %s duty failed (%r): stopping the service", failure.duty.name, cause)
            self.stop.set()  # run() releases the lock on its way out
            raise cause from None
        finally:
            if not self.stop.is_set():
                with contextlib.suppress(redis.RedisError):
                    self.lock.release()  # if it is still ours: let the next leader start
                log.info("stopped leading (token %s); standing by", token)

    def _serve(self, term: Term) -> None:
        """Begin, run and end the duties for ``term``; raises what ended it, if a duty did."""
        begun: list[Duty] = []
        failures: list[_Failure] = []
        threads: list[threading.Thread] = []
        try:
            for duty in self.duties:
                try:
                    duty.begin(term)
                except FencedOut:
                    raise
                except Exception as error:
                    raise _Failure(duty, error) from error
                begun.append(duty)
            for duty in self.duties:
                thread = threading.Thread(
                    target=self._run_duty, args=(duty, term, failures), name=f"vf-{duty.name}"
                )
                thread.start()
                threads.append(thread)
            self._watch(failures)
        finally:
            term.ending.set()
            for thread in threads:
                thread.join()
            for duty in reversed(begun):
                try:
                    duty.end(term)
                except Exception:
                    log.exception("the %s duty failed to end its term", duty.name)
        # After the joins: a duty may have failed while the term was ending.
        fenced = [f.error for f in failures if isinstance(f.error, FencedOut)]
        others = [f for f in failures if not isinstance(f.error, FencedOut)]
        if others:
            raise others[0]
        if fenced:
            raise max(fenced, key=lambda error: error.latest)

    @staticmethod
    def _run_duty(duty: Duty, term: Term, failures: list[_Failure]) -> None:
        try:
            duty.run(term)
        except Exception as error:
            failures.append(_Failure(duty, error))

    def _watch(self, failures: list[_Failure]) -> None:
        """Keep the lock until stop is set, the lock is lost or a duty failed."""
        unreachable = False
        while not self.stop.wait(WATCH_SECONDS):
            if failures:
                return
            try:
                held = self.lock.keep()
                unreachable = False
            except self._lost_connection as error:
                held = self.lock.leading()  # keep trying while the lock is still ours
                if not unreachable:
                    log.warning("cannot renew the leader lock (%s); trying again", error)
                    unreachable = True
            if not held:
                log.warning("stepping down: the leader lock was lost")
                return
