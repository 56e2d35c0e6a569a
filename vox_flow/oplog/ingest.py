"""Feed the op-log from Celery's own event stream (``app.events.Receiver``).

Workers must send task events (``celery worker -E`` or ``worker_send_task_events``).
``submitted`` ops come from ``task-sent`` events: Celery's ``apply_async`` sends them with
``task_send_sent_event``, and vox_flow's ``submit`` publishes one from its enqueue script.
A ``task-failed`` whose exception is vox_flow's ``DeadLettered`` is a ``dead_lettered`` op.
Events are buffered briefly and appended in small batches, so a busy broker costs one
transaction per batch, not per event.

On Redis, Celery's events are pub/sub: an event published while nobody is subscribed is lost.
So one subscription is kept for the life of :func:`ingest`, idle or not (Celery's
``Receiver.capture`` renews it after each idle second, and events sent in that gap are lost).
What is still lost: events sent before the subscription is live (``ready``), and those sent
while a lost broker connection is being re-established by the caller.

Run by a control-service leader (the ingest duty, vox_flow/control/duties.py), every write
carries its fencing token and the loop asks, at each periodic flush, whether it still leads
(a cheap check: the service keeps the lock from another thread); a mapper seeded from the
op-log (:meth:`EventMapper.resuming`) does not join again the nodes an earlier leader joined.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vox_flow.contracts.oplog import OpEvent, OpKind, StateAt
from vox_flow.oplog.log import NODE_STATUS, FencedOut, NewOp, OpLog

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Mapping

    from celery import Celery

TASK_EVENTS: dict[str, OpEvent] = {
    "task-sent": OpEvent.SUBMITTED,
    "task-received": OpEvent.RECEIVED,
    "task-started": OpEvent.STARTED,
    "task-retried": OpEvent.RETRIED,
    "task-succeeded": OpEvent.SUCCEEDED,
    "task-failed": OpEvent.FAILED,
    "task-rejected": OpEvent.REJECTED,
    "task-revoked": OpEvent.REVOKED,
}
_KEPT_FIELDS = ("name", "queue", "exception", "runtime", "retries")
# The repr Celery puts in a task-failed event when the worker dead-lettered the task
# (vox_flow.errors.DeadLettered, raised after the dead letter is stored).
DEAD_LETTERED_PREFIX = "DeadLettered("
# What an ingester sends itself to learn that its subscription is live (no op).
PROBE_EVENT = "vox_flow-ingest-probe"


# A node silent this long has left, even if it never said so (killed, machine lost). Celery
# workers send a heartbeat every 2 s; the mesh's rule is "offline after 60 s".
OFFLINE_AFTER_SECONDS = 60.0
NODE_OFFLINE = NODE_STATUS[OpEvent.LEFT]
# How long an op waits in the buffer at most, and how often a leader's lock is looked at.
FLUSH_SECONDS = 0.2


class EventMapper:
    """Turns Celery events into ops; remembers which nodes are online and when last heard."""

    def __init__(self, offline_after: float = OFFLINE_AFTER_SECONDS) -> None:
        self.online: set[str] = set()
        self.offline_after = offline_after
        self.last_heard: dict[str, float] = {}

    @classmethod
    def resuming(
        cls, state: StateAt, heard_at: float, offline_after: float = OFFLINE_AFTER_SECONDS
    ) -> EventMapper:
        """A mapper that knows every node ``state`` does not show offline, as heard from at
        ``heard_at`` (Unix time): it joins none of them again, and leaves one that stays
        silent for ``offline_after`` from then."""
        mapper = cls(offline_after)
        for node in state.nodes:
            if node.status != NODE_OFFLINE:
                mapper.online.add(node.node_id)
                mapper.last_heard[node.node_id] = heard_at
        return mapper

    def silent(self, now: float) -> list[NewOp]:
        """A ``left`` op for every online node not heard from for ``offline_after`` seconds."""
        gone = [h for h in self.online if now - self.last_heard.get(h, now) >= self.offline_after]
        ops = []
        for host in sorted(gone):
            self.online.discard(host)
            at = datetime.fromtimestamp(self.last_heard[host] + self.offline_after, UTC)
            ops.append(NewOp(OpKind.NODE, host, OpEvent.LEFT, {"reason": "silent"}, at))
        return ops

    def op(self, event: Mapping[str, Any]) -> NewOp | None:
        """The op an event stands for, or None when it changes nothing."""
        kind: str = event.get("type", "")
        stamp = event.get("timestamp")
        at = datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, (int, float)) else None
        host = event.get("hostname")
        if kind in TASK_EVENTS and event.get("uuid"):
            data = {k: event[k] for k in _KEPT_FIELDS if event.get(k) is not None}
            if kind != "task-sent" and isinstance(host, str):
                data["node"] = host
            op_event = TASK_EVENTS[kind]
            if kind == "task-failed" and str(event.get("exception", "")).startswith(
                DEAD_LETTERED_PREFIX
            ):
                op_event = OpEvent.DEAD_LETTERED
            return NewOp(OpKind.TASK, str(event["uuid"]), op_event, _jsonable(data), at)
        if not isinstance(host, str):
            return None
        if isinstance(stamp, (int, float)):
            self.last_heard[host] = float(stamp)
        if kind == "worker-online" or (kind == "worker-heartbeat" and host not in self.online):
            self.online.add(host)
            return NewOp(OpKind.NODE, host, OpEvent.JOINED, {}, at)
        if kind == "worker-offline":
            self.online.discard(host)
            return NewOp(OpKind.NODE, host, OpEvent.LEFT, {}, at)
        return None


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in data.items()}


def ingest(
    app: Celery,
    oplog: OpLog,
    *,
    stop: threading.Event,
    flush_every: float = FLUSH_SECONDS,
    batch: int = 500,
    mapper: EventMapper | None = None,
    ready: threading.Event | None = None,
    fence: int | None = None,
    leading: Callable[[], bool] | None = None,
) -> int:
    """Append an op for every relevant event on ``app``'s broker until ``stop`` is set.

    Returns how many ops were appended. Events are at most about ``flush_every`` seconds (or
    ``batch`` events) in the buffer before they are written, and are written however the
    loop ends. ``ready`` is set once the subscription is live: every event sent after that is
    in the op-log unless the broker connection is lost. A lost or unreachable broker raises
    one of the connection's ``connection_errors`` or kombu's ``OperationalError``; pass the
    same ``mapper`` to the call that resumes, so nodes already known online are not joined
    again.

    ``fence``: the caller's fencing token, carried by every write; when a newer leader has
    claimed the op-log, the write raises :class:`FencedOut` and the buffered ops are dropped
    (the newer leader records those sent once it listens). ``leading`` is called at every
    periodic flush, so it should not wait on the network (the control service passes
    :meth:`LeaderLock.leading`): once it returns False, the loop writes what it buffered (the
    fence refuses it if a newer leader has claimed the op-log) and returns.
    """
    mapper = mapper or EventMapper()
    buffer: list[NewOp] = []
    written = 0
    nonce = uuid.uuid4().hex
    subscribed = False

    def flush() -> None:
        nonlocal written
        if buffer:
            try:
                oplog.append_many(buffer, fence=fence)
            except FencedOut:
                buffer.clear()  # not ours to write any more, nor to retry on the way out
                raise
            written += len(buffer)
            buffer.clear()

    def handle(event: dict[str, Any]) -> None:
        nonlocal subscribed
        if event.get("type") == PROBE_EVENT:  # ours or another ingester's: not an op
            if event.get("nonce") == nonce and not subscribed:
                subscribed = True
                if ready is not None:
                    ready.set()
            return
        op = mapper.op(event)
        if op is not None:
            buffer.append(op)
            if len(buffer) >= batch:
                flush()

    with contextlib.ExitStack() as cleanup:
        # Whatever ends the loop (stop, a lost broker connection), buffered ops are written.
        cleanup.callback(flush)
        connection = cleanup.enter_context(app.connection_for_read())
        receiver: Any = app.events.Receiver(connection, handlers={"*": handle})
        # Kombu retries an unreachable broker forever and would never look at ``stop``; fail
        # at once instead, and let the caller retry with its own backoff.
        receiver.connect_max_retries = 0
        # One subscription for the whole call. The events exchange is Redis pub/sub: whatever
        # is published while it is not subscribed is gone, so it is never renewed when idle.
        conn, _, _ = cleanup.enter_context(receiver.consumer_context(wakeup=False))
        prober = app.events.Dispatcher(conn, buffer_while_offline=False)
        probed: float | None = None
        due = time.monotonic() + flush_every
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # idle: time to flush and look at stop
                conn.drain_events(timeout=max(due - time.monotonic(), 0.01))
            now = time.monotonic()
            # Kombu sends the subscribe only in the first drain, so probe after it, and again
            # until our own probe comes back: then the broker has the subscription.
            if not subscribed and (probed is None or now - probed >= flush_every):
                prober.send(PROBE_EVENT, nonce=nonce)
                probed = now
            if now >= due:
                if leading is not None and not leading():
                    break
                buffer.extend(mapper.silent(time.time()))
                flush()
                due = now + flush_every
    return written
