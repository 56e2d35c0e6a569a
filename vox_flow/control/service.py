"""The control service (``vox-flow control``): the process that keeps the control store.

Any number of replicas may run against one broker and store; one leads. A replica stands by
until it takes the leader lock (vox_flow/leader.py, keys ``vf:control:leader`` and
``vf:control:fence``). Then, for as long as it leads (a *term*), it:

1. claims the op-log with its fencing token (:meth:`OpLog.fence`) before anything else, so
   an earlier leader that wakes up from a pause can no longer add ops;
2. runs again every outside effect a crash left pending in the audit outbox;
3. seeds its event mapper from the op-log, so nodes already joined are not joined again;
4. turns Celery's events into op-log ops (:func:`vox_flow.oplog.ingest.ingest`), every
   write carrying its token, and renews the lock at each of the ingest loop's flushes;
5. signs a checkpoint of the audit log every ``control_checkpoint_seconds`` when it grew.

The term ends when :attr:`stop` is set (SIGTERM/SIGINT in ``vox-flow control``: the lock is
released, so a standby takes over at its next poll), or when the lock is lost or a write is
refused: the replica stops ingesting and checkpointing and stands by again. A leader that
dies holding the lock is replaced once the lock's TTL (``control_leader_ttl_seconds``) has
run out, within one standby poll (a tenth of the TTL).

Celery's events are fire-and-forget: events sent while no leader listens (a dead leader's
remaining TTL, the new one's start-up, a broker reconnect) are not in the op-log. A lost
broker connection is retried with backoff (the lock is kept if it comes back within the
TTL); a store error ends the service (its supervisor restarts it) rather than dropping ops
silently.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

import redis
from kombu.exceptions import OperationalError
from sqlalchemy import func, select

from vox_flow.actions import registry
from vox_flow.actions.perform import Resumed, resume_pending
from vox_flow.audit.keys import CONTROL_KEY, key_path, load_or_create
from vox_flow.audit.log import AuditLog
from vox_flow.keyspace import CONTROL_FENCE, CONTROL_LEADER
from vox_flow.leader import LeaderLock
from vox_flow.oplog.ingest import EventMapper, ingest
from vox_flow.oplog.log import FencedOut, OpLog
from vox_flow.store import Store, open_store
from vox_flow.store.rows import CheckpointRow

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow
    from vox_flow.contracts.audit import Checkpoint

log = logging.getLogger(__name__)

LOCK_KEY, FENCE_KEY = CONTROL_LEADER, CONTROL_FENCE

_RECONNECT_FIRST, _RECONNECT_MAX = 0.5, 30.0
# A standby tries the lock this many times per TTL: a leader that died is replaced within
# the time its lock had left plus one poll, for one cheap Redis call per poll.
STANDBY_POLLS_PER_TTL = 10


class ControlService:
    """One replica of the control store's keeper: stands by, or leads (outbox, op-log
    ingest, checkpoints) while it holds the leader lock."""

    def __init__(
        self, app: VoxFlow, store: Store | None = None, lock: LeaderLock | None = None
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.stop = threading.Event()
        self.store = store or open_store(self.settings)
        self.signer = load_or_create(key_path(self.settings.data_dir, CONTROL_KEY), CONTROL_KEY)
        self.audit = AuditLog(self.store)
        self.audit.register(self.signer)
        self.oplog = OpLog(self.store)
        ttl = self.settings.control_leader_ttl_seconds
        self.lock = lock or LeaderLock(app.redis, ttl, lock_key=LOCK_KEY, fence_key=FENCE_KEY)
        self.poll_seconds = ttl / STANDBY_POLLS_PER_TTL
        with app.connection_for_read() as probe:  # lazy: nothing connects here
            # ingest raises OperationalError when it cannot connect at all; the lock's own
            # calls raise redis-py's errors.
            self._lost_connection: tuple[type[BaseException], ...] = (
                *probe.connection_errors,
                OperationalError,
                redis.ConnectionError,
                redis.TimeoutError,
            )

    def resume(self) -> Resumed:
        """Run every outside effect left pending in the outbox (by a crash or a failure)."""
        resumed = resume_pending(self.store, registry.effects(self.app))
        if resumed.done:
            log.info("outbox: finished the effects of audit entries %s", resumed.done)
        for seq, error in resumed.failed.items():
            log.error("outbox: the effect of audit entry %s failed again: %s", seq, error)
        return resumed

    def checkpoint_if_grown(self) -> Checkpoint | None:
        """Sign a checkpoint of the audit log unless one already covers its current size."""
        with self.store.read() as conn:
            covered = conn.execute(select(func.max(CheckpointRow.size))).scalar_one()
        if self.audit.head().size <= (covered or 0):
            return None
        checkpoint = self.audit.checkpoint(self.signer)
        log.info("checkpoint: %s entries, root %s", checkpoint.size, checkpoint.root_hash)
        return checkpoint

    def run(self) -> int:
        """Stand by or lead, as the lock decides, until :attr:`stop` is set; exit code."""
        delay = _RECONNECT_FIRST
        standing_by = False
        try:
            while not self.stop.is_set():
                try:
                    token = self.lock.try_acquire()
                    holder = None if token is not None else self.lock.holder()
                except self._lost_connection as error:
                    log.warning("broker unreachable (%s); trying again in %.1f s", error, delay)
                    self.stop.wait(delay)
                    delay = min(delay * 2, _RECONNECT_MAX)
                    continue
                delay = _RECONNECT_FIRST
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
        """One term: claim the op-log, resume the outbox, then ingest and checkpoint until
        stop is set, the lock is lost or a newer leader refuses our writes."""
        log.info("leading the control service with fencing token %s", token)
        term = threading.Event()
        checkpoints = threading.Thread(
            target=self._checkpoints, args=(term,), name="vf-checkpoints"
        )
        try:
            self.oplog.fence(token)
            self.resume()
            mapper = EventMapper.resuming(self.oplog.latest_state(), time.time())
            checkpoints.start()
            self._ingest(token, mapper)
        except FencedOut as error:
            log.warning("stepping down: %s", error)
            # Normally a newer leader; but after Redis lost its fence counter every new
            # token would be refused: make the next one larger than any the store has seen.
            with contextlib.suppress(redis.RedisError):
                self.lock.raise_fence(error.latest)
        finally:
            term.set()
            if checkpoints.is_alive():
                checkpoints.join()
        if not self.stop.is_set():
            with contextlib.suppress(redis.RedisError):
                self.lock.release()  # if it is still ours: let the next leader start
            log.info("stopped leading (token %s); standing by", token)

    def _checkpoints(self, term: threading.Event) -> None:
        while not term.wait(self.settings.control_checkpoint_seconds):
            if not self.lock.leading():
                return  # the term is ending: a deposed leader signs nothing more
            try:
                self.checkpoint_if_grown()
            except Exception:
                log.exception("checkpoint failed; trying again next period")

    def _ingest(self, token: int, mapper: EventMapper) -> None:
        """Ingest until stop or the lock is lost; reconnects to a lost broker meanwhile."""
        delay = _RECONNECT_FIRST
        while not self.stop.is_set():
            subscribed = threading.Event()
            try:
                if not self.lock.keep():
                    log.warning("stepping down: the leader lock was lost")
                    return
                log.info("ingesting Celery events into the op-log")
                ingest(
                    self.app,
                    self.oplog,
                    stop=self.stop,
                    mapper=mapper,  # kept across reconnects: known nodes are not joined again
                    ready=subscribed,
                    fence=token,
                    leading=self.lock.keep,
                )
            except self._lost_connection as error:
                if subscribed.is_set():  # it was working: events are lost until we are back
                    delay = _RECONNECT_FIRST
                log.warning("broker connection lost (%s); reconnecting in %.1f s", error, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, _RECONNECT_MAX)
