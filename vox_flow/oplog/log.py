"""The op-log: every task and node state change, and the state at any past instant.

Appends lock the single ``op_head`` row, so ops get one order and a time that never goes
backwards in it (an event stamped earlier than the head is stamped with the head's time;
its own time stays in ``data``). Every ``snapshot_every`` ops the whole state is written as
a snapshot in the same transaction, so :meth:`OpLog.state_at` loads the nearest snapshot at
or before the instant and replays fewer than ``snapshot_every`` ops: its cost is bounded by
the snapshot distance, not by the history's length.

Writes may carry a leader's fencing token (vox_flow/control/service.py): ``op_head`` keeps
the highest one written with, and a write carrying a lower token is refused under the head's
lock, so a control-service replica deposed while paused cannot add ops once a newer leader
has claimed the op-log (:meth:`OpLog.fence`). Writes without a token are never refused.

The state holds every node and every *open* task. A task that finishes (succeeded, failed,
rejected, revoked, dead-lettered) leaves it and is counted in ``finished``; its full story
stays in the ops. That keeps snapshots as large as the work in flight, not the history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vox_flow.audit.body import datetime_to_us, us_to_datetime
from vox_flow.contracts.oplog import NodeState, Op, OpEvent, OpKind, StateAt, TaskState
from vox_flow.store import Store, driver_sql, now_us, raw_cursor

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from datetime import datetime

    from sqlalchemy import Connection

E = OpEvent
TASK_STATUS: dict[OpEvent, str] = {
    E.SUBMITTED: "submitted",
    E.RECEIVED: "received",
    E.STARTED: "started",
    E.RETRIED: "retrying",
    E.REPLAYED: "replayed",
    E.SUCCEEDED: "succeeded",
    E.FAILED: "failed",
    E.REJECTED: "rejected",
    E.REVOKED: "revoked",
    E.DEAD_LETTERED: "dead_lettered",
}
FINISHED = frozenset({"succeeded", "failed", "rejected", "revoked", "dead_lettered"})
NODE_STATUS: dict[OpEvent, str] = {
    E.JOINED: "online",
    E.LEFT: "offline",
    E.PAUSED: "paused",
    E.RESUMED: "online",
    E.DRAINING: "draining",
    E.DRAINED: "drained",
}


class OpLogError(RuntimeError):
    """An op was refused, or the history asked for was pruned."""


class FencedOut(OpLogError):
    """A write carried a fencing token older than one a newer leader already wrote with."""

    def __init__(self, token: int, latest: int) -> None:
        super().__init__(
            f"op-log write refused: fencing token {token} is older than {latest}, which a "
            "newer control-service leader has written with (this replica no longer leads)"
        )
        self.token = token
        self.latest = latest


@dataclass
class State:
    """Open tasks, nodes and finished-task counts; mutated by :meth:`apply`.

    ``tasks[id] = [name, status, node, retries, updated_us]``;
    ``nodes[id] = [status, updated_us]``.
    """

    tasks: dict[str, list[Any]] = field(default_factory=dict)
    nodes: dict[str, list[Any]] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)

    def apply(self, kind: str, subject: str, event: str, data: Mapping[str, Any], at: int) -> None:
        """Apply one op (recorded at ``at`` microseconds)."""
        if kind == OpKind.NODE:
            self.nodes[subject] = [NODE_STATUS[OpEvent(event)], at]
            return
        status = TASK_STATUS[OpEvent(event)]
        task = self.tasks.get(subject) or [None, status, None, 0, at]
        name, node = data.get("name"), data.get("node")
        task[0] = name if isinstance(name, str) else task[0]
        task[1] = status
        task[2] = node if isinstance(node, str) else task[2]
        task[3] += event == E.RETRIED
        task[4] = at
        if status in FINISHED:
            self.tasks.pop(subject, None)
            self.finished[status] = self.finished.get(status, 0) + 1
        else:
            self.tasks[subject] = task

    def to_json(self) -> str:
        """Compact JSON of the whole state (a snapshot)."""
        return json.dumps(
            {"tasks": self.tasks, "nodes": self.nodes, "finished": self.finished},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> State:
        """The state a snapshot holds."""
        raw = json.loads(text)
        return cls(raw["tasks"], raw["nodes"], raw["finished"])

    def at(self, when: datetime, op_seq: int) -> StateAt:
        """The wire form of this state."""
        return StateAt(
            at=when,
            op_seq=op_seq,
            tasks=[
                TaskState(
                    task_id=task_id,
                    name=t[0],
                    status=t[1],
                    node=t[2],
                    retries=t[3],
                    updated_at=us_to_datetime(t[4]),
                )
                for task_id, t in sorted(self.tasks.items())
            ],
            nodes=[
                NodeState(node_id=node_id, status=n[0], updated_at=us_to_datetime(n[1]))
                for node_id, n in sorted(self.nodes.items())
            ],
            finished=dict(sorted(self.finished.items())),
        )


@dataclass(frozen=True)
class NewOp:
    """An op to append; ``at`` defaults to now (clamped so time never runs backwards)."""

    kind: OpKind
    subject: str
    event: OpEvent
    data: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | None = None

    def check(self) -> None:
        """Raise :class:`OpLogError` if the event does not belong to the kind."""
        table = TASK_STATUS if self.kind == OpKind.TASK else NODE_STATUS
        if OpEvent(self.event) not in table:
            raise OpLogError(f"{self.event!r} is not a {self.kind} event")


_LOCK_HEAD = "SELECT seq, time_us, fence FROM op_head WHERE id = 1"
_UPDATE_HEAD = "UPDATE op_head SET seq = :seq, time_us = :time_us, fence = :fence WHERE id = 1"
_UPDATE_FENCE = "UPDATE op_head SET fence = :fence WHERE id = 1"
_HEAD = "SELECT seq, time_us FROM op_head WHERE id = 1"
_INSERT_OP = (
    "INSERT INTO ops (seq, time_us, kind, subject, event, data) "
    "VALUES (:seq, :time_us, :kind, :subject, :event, :data)"
)
_INSERT_SNAPSHOT = (
    "INSERT INTO op_snapshots (op_seq, time_us, state) VALUES (:op_seq, :time_us, :state)"
)
_SNAPSHOT_AT = (
    "SELECT op_seq, state FROM op_snapshots WHERE op_seq <= :seq ORDER BY op_seq DESC LIMIT 1"
)
_OPS_BETWEEN = (
    "SELECT seq, time_us, kind, subject, event, data FROM ops "
    "WHERE seq > :after AND seq <= :upto ORDER BY seq"
)
# Time is non-decreasing in seq, so the (time_us, seq) index finds the last op at or before
# t with one backward seek; MAX(seq) ... WHERE time_us <= t would scan the whole prefix.
_LAST_SEQ_AT = "SELECT seq FROM ops WHERE time_us <= :t ORDER BY time_us DESC, seq DESC LIMIT 1"
_FIRST_SEQ = "SELECT MIN(seq) FROM ops"


def _dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(dict(data), separators=(",", ":"), sort_keys=True)


def _fenced(latest: int | None, token: int | None) -> int | None:
    """The head's fence after a write with ``token``; raises :class:`FencedOut` if stale."""
    if token is None:
        return latest
    if latest is not None and token < latest:
        raise FencedOut(token, latest)
    return token


def _state_after(conn: Connection, seq: int) -> State:
    """The state after op ``seq``: nearest snapshot, then at most a snapshot distance of ops."""
    cursor = raw_cursor(conn)
    cursor.execute(driver_sql(conn, _SNAPSHOT_AT), {"seq": seq})
    row = cursor.fetchone()
    base, state = (row[0], State.from_json(row[1])) if row else (0, State())
    cursor.execute(driver_sql(conn, _OPS_BETWEEN), {"after": base, "upto": seq})
    expected = base + 1
    for op_seq, time_us, kind, subject, event, data in cursor.fetchall():
        if op_seq != expected:
            raise OpLogError(f"ops {expected}..{op_seq - 1} are missing (pruned?)")
        state.apply(kind, subject, event, json.loads(data), time_us)
        expected += 1
    if expected != seq + 1:
        raise OpLogError(f"ops {expected}..{seq} are missing (pruned?)")
    return state


class OpLog:
    """Append task and node state changes; read them back, or the state at any instant."""

    def __init__(self, store: Store, *, snapshot_every: int | None = None) -> None:
        self.store = store
        self.snapshot_every = snapshot_every or store.snapshot_every

    def append(
        self,
        kind: OpKind,
        subject: str,
        event: OpEvent,
        data: Mapping[str, Any] | None = None,
        *,
        at: datetime | None = None,
        fence: int | None = None,
    ) -> Op:
        """Append one op and return it as recorded (with its sequence number and time)."""
        return self.append_many([NewOp(kind, subject, event, data or {}, at)], fence=fence)[0]

    def append_many(self, ops: Sequence[NewOp], *, fence: int | None = None) -> list[Op]:
        """Append several ops in one transaction, in the order given.

        ``fence``: the writing leader's fencing token. A token older than the latest one
        written with raises :class:`FencedOut` and writes nothing.
        """
        for new in ops:
            new.check()
        if not ops:
            return []
        every = self.snapshot_every
        with self.store.write() as conn:
            cursor = raw_cursor(conn)
            cursor.execute(driver_sql(conn, _LOCK_HEAD, lock=True))
            seq, last_us, latest = cursor.fetchone()
            # Checked under the head's lock: no newer leader can claim the log until commit.
            latest = _fenced(latest, fence)
            # Only a batch that crosses a snapshot boundary needs the state at its start.
            state = _state_after(conn, seq) if (seq + len(ops)) // every > seq // every else None
            rows: list[dict[str, Any]] = []
            snapshots: list[dict[str, Any]] = []
            stamp = now_us()
            for new in ops:
                seq += 1
                wanted = stamp if new.at is None else datetime_to_us(new.at)
                last_us = max(last_us, wanted)
                data = _dumps(new.data)
                rows.append(
                    {
                        "seq": seq,
                        "time_us": last_us,
                        "kind": str(new.kind),
                        "subject": new.subject,
                        "event": str(new.event),
                        "data": data,
                    }
                )
                if state is not None:
                    state.apply(new.kind, new.subject, new.event, new.data, last_us)
                    if seq % every == 0:
                        snapshots.append(
                            {"op_seq": seq, "time_us": last_us, "state": state.to_json()}
                        )
            cursor.executemany(driver_sql(conn, _INSERT_OP), rows)
            if snapshots:
                cursor.executemany(driver_sql(conn, _INSERT_SNAPSHOT), snapshots)
            cursor.execute(
                driver_sql(conn, _UPDATE_HEAD), {"seq": seq, "time_us": last_us, "fence": latest}
            )
        return [_op_from_row(r) for r in rows]

    def fence(self, token: int) -> None:
        """Claim the op-log for the leader holding ``token``: from this commit on, writes
        with an older token are refused. Raises :class:`FencedOut` if a newer one claimed it.
        """
        with self.store.write() as conn:
            cursor = raw_cursor(conn)
            cursor.execute(driver_sql(conn, _LOCK_HEAD, lock=True))
            _, _, latest = cursor.fetchone()
            cursor.execute(driver_sql(conn, _UPDATE_FENCE), {"fence": _fenced(latest, token)})

    def latest_state(self) -> StateAt:
        """Tasks and nodes after the latest op, stamped with its time (whatever the clock)."""
        with self.store.read() as conn:
            cursor = raw_cursor(conn)
            cursor.execute(driver_sql(conn, _HEAD))
            seq, time_us = cursor.fetchone()
            return _state_after(conn, seq).at(us_to_datetime(time_us), seq)

    def ops(self, since_seq: int = 1, until_seq: int | None = None) -> Iterator[Op]:
        """Ops from ``since_seq`` (to ``until_seq``), in order."""
        with self.store.read() as conn:
            cursor = raw_cursor(conn)
            upto = until_seq if until_seq is not None else 2**62
            cursor.execute(driver_sql(conn, _OPS_BETWEEN), {"after": since_seq - 1, "upto": upto})
            while batch := cursor.fetchmany(5000):
                for seq, time_us, kind, subject, event, data in batch:
                    yield _op_from_row(
                        {
                            "seq": seq,
                            "time_us": time_us,
                            "kind": kind,
                            "subject": subject,
                            "event": event,
                            "data": data,
                        }
                    )

    def state_at(self, when: datetime) -> StateAt:
        """Tasks and nodes as they were at ``when`` (after every op recorded at or before it).

        Raises :class:`OpLogError` if the history needed was pruned by retention.
        """
        with self.store.read() as conn:
            cursor = raw_cursor(conn)
            cursor.execute(driver_sql(conn, _LAST_SEQ_AT), {"t": datetime_to_us(when)})
            row = cursor.fetchone()
            seq = row[0] if row else 0
            if seq == 0:
                cursor.execute(driver_sql(conn, _FIRST_SEQ))
                first = cursor.fetchone()[0]
                if first is not None and first > 1:
                    raise OpLogError("the op-log before this instant was pruned")
            return _state_after(conn, seq).at(when, seq)


def _op_from_row(row: Mapping[str, Any]) -> Op:
    data = row["data"]
    return Op(
        seq=row["seq"],
        time=us_to_datetime(row["time_us"]),
        kind=OpKind(row["kind"]),
        subject=row["subject"],
        event=OpEvent(row["event"]),
        data=json.loads(data) if isinstance(data, str) else dict(data),
    )
