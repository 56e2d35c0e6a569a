"""The control service (``vox-flow control``): the one process that keeps the control store.

At start it opens the store (migrations run on first use), registers its key and runs again
every outside effect a crash left pending in the audit outbox. Then, until :attr:`stop` is
set (SIGTERM/SIGINT in ``vox-flow control``), it turns Celery's events into op-log ops
(:func:`vox_flow.control.ingest.ingest`; buffered ops are written before it returns) and
signs a checkpoint of the audit log every ``control_checkpoint_seconds`` when the log grew.

Celery's events are fire-and-forget: events sent while no control service listens (or while
it reconnects to the broker) are not in the op-log. A lost broker connection is retried with
backoff; a store error ends the service (its supervisor restarts it) rather than dropping
ops silently.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from kombu.exceptions import OperationalError
from sqlalchemy import func, select

from vox_flow.contracts.audit import Checkpoint
from vox_flow.control.actions import Effects, Resumed, resume_pending
from vox_flow.control.audit import AuditLog
from vox_flow.control.ingest import EventMapper, ingest
from vox_flow.control.keys import CONTROL_KEY, key_path, load_or_create
from vox_flow.control.oplog import OpLog
from vox_flow.store import Store, open_store
from vox_flow.store.rows import CheckpointRow

if TYPE_CHECKING:
    from vox_flow.app import VoxFlow

log = logging.getLogger(__name__)

_RECONNECT_FIRST, _RECONNECT_MAX = 0.5, 30.0


def known_effects(app: VoxFlow) -> Effects:
    """Every effect an operator action can leave pending: dead letters, schedules."""
    from vox_flow.deadletter import deadletter_effects
    from vox_flow.schedules.operations import schedule_effects

    return Effects().include(deadletter_effects(app)).include(schedule_effects(app))


class ControlService:
    """The control store's keeper: outbox at start, then op-log ingest and checkpoints."""

    def __init__(self, app: VoxFlow, store: Store | None = None) -> None:
        self.app = app
        self.settings = app.settings
        self.stop = threading.Event()
        self.store = store or open_store(self.settings)
        self.signer = load_or_create(key_path(self.settings.data_dir, CONTROL_KEY), CONTROL_KEY)
        self.audit = AuditLog(self.store)
        self.audit.register(self.signer)
        self.oplog = OpLog(self.store)

    def resume(self) -> Resumed:
        """Run every outside effect left pending in the outbox (by a crash or a failure)."""
        resumed = resume_pending(self.store, known_effects(self.app))
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
        """Resume the outbox, then ingest and checkpoint until :attr:`stop` is set; exit code."""
        self.resume()
        checkpoints = threading.Thread(target=self._checkpoints, name="vf-checkpoints")
        checkpoints.start()
        try:
            self._ingest()
        finally:
            self.stop.set()
            checkpoints.join()
            self.store.dispose()
        log.info("control service stopped")
        return 0

    def _checkpoints(self) -> None:
        while not self.stop.wait(self.settings.control_checkpoint_seconds):
            try:
                self.checkpoint_if_grown()
            except Exception:
                log.exception("checkpoint failed; trying again next period")

    def _ingest(self) -> None:
        with self.app.connection_for_read() as probe:  # lazy: nothing connects here
            # ingest raises OperationalError when it cannot connect at all.
            lost_connection: tuple[type[BaseException], ...] = (
                *probe.connection_errors,
                OperationalError,
            )
        mapper = EventMapper()  # kept across reconnects: known nodes are not joined again
        delay = _RECONNECT_FIRST
        while not self.stop.is_set():
            log.info("ingesting Celery events into the op-log")
            subscribed = threading.Event()
            try:
                ingest(self.app, self.oplog, stop=self.stop, mapper=mapper, ready=subscribed)
            except lost_connection as error:
                if subscribed.is_set():  # it was working: events are lost until we are back
                    delay = _RECONNECT_FIRST
                log.warning("broker connection lost (%s); reconnecting in %.1f s", error, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, _RECONNECT_MAX)
