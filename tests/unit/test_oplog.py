"""The op-log: state_at from snapshots equals a brute-force replay of the whole history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.conftest_store import sqlite_store
from vox_flow.audit.body import datetime_to_us
from vox_flow.contracts.oplog import OpEvent, OpKind
from vox_flow.oplog.log import (
    NODE_STATUS,
    TASK_STATUS,
    FencedOut,
    NewOp,
    OpLog,
    OpLogError,
    State,
)
from vox_flow.store import Store

T0 = datetime(2030, 1, 1, tzinfo=UTC)
_task_op = st.builds(
    lambda t, e, node, dt: NewOp(OpKind.TASK, f"t{t}", e, {"name": f"job{t % 3}", "node": node},
                                 T0 + timedelta(milliseconds=dt)),
    st.integers(0, 12), st.sampled_from(sorted(TASK_STATUS)), st.sampled_from(["a", "b"]),
    st.integers(0, 5_000),
)  # fmt: skip
_node_op = st.builds(
    lambda n, e, dt: NewOp(OpKind.NODE, f"n{n}", e, {}, T0 + timedelta(milliseconds=dt)),
    st.integers(0, 3), st.sampled_from(sorted(NODE_STATUS)), st.integers(0, 5_000),
)  # fmt: skip


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("oplog")


_counter = iter(range(10**9))


def _fresh(base: Path) -> Store:
    path = base / f"s{next(_counter)}"
    path.mkdir()
    return sqlite_store(path)


def brute_force(log: OpLog, when: datetime) -> State:
    """Replay every recorded op at or before ``when``, from nothing."""
    state = State()
    for op in log.ops():
        if op.time <= when:
            state.apply(op.kind, op.subject, op.event, op.data, datetime_to_us(op.time))
    return state


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    st.lists(st.lists(_task_op | _node_op, min_size=1, max_size=9), min_size=1, max_size=12),
    st.lists(st.integers(-100, 5_100), min_size=1, max_size=6),
    st.sampled_from([2, 3, 5, 16]),
)
def test_state_at_equals_brute_force(
    store_dir: Path, batches: list[list[NewOp]], probes: list[int], every: int
) -> None:
    log = OpLog(_fresh(store_dir), snapshot_every=every)
    for batch in batches:
        log.append_many(batch)
    for ms in probes:
        when = T0 + timedelta(milliseconds=ms)
        got = log.state_at(when)
        want = brute_force(log, when).at(when, got.op_seq)
        assert got == want
        assert got.op_seq == sum(1 for op in log.ops() if op.time <= when)


def test_time_never_runs_backwards_and_snapshots_are_written(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    log = OpLog(store, snapshot_every=4)
    ops = [log.append(OpKind.TASK, f"t{i}", OpEvent.SUBMITTED, at=T0 - timedelta(seconds=i))
           for i in range(10)]  # fmt: skip
    assert [op.seq for op in ops] == list(range(1, 11))
    assert all(op.time == T0 for op in ops)  # clamped to the head's time
    with store.read() as conn:
        rows = conn.exec_driver_sql("SELECT op_seq, state FROM op_snapshots").all()
    assert [r[0] for r in rows] == [4, 8]
    assert len(json.loads(rows[1][1])["tasks"]) == 8


def test_semantics_of_a_task_life(tmp_path: Path) -> None:
    log = OpLog(sqlite_store(tmp_path))
    steps = [(OpEvent.SUBMITTED, {"name": "resize"}), (OpEvent.STARTED, {"node": "a"}),
             (OpEvent.RETRIED, {}), (OpEvent.STARTED, {"node": "b"})]  # fmt: skip
    for i, (event, data) in enumerate(steps):
        log.append(OpKind.TASK, "t1", event, data, at=T0 + timedelta(seconds=i))
    log.append(OpKind.NODE, "a", OpEvent.JOINED, at=T0)
    log.append(OpKind.NODE, "a", OpEvent.DRAINING, at=T0 + timedelta(seconds=5))
    log.append(OpKind.TASK, "t1", OpEvent.SUCCEEDED, at=T0 + timedelta(seconds=6))
    mid = log.state_at(T0 + timedelta(seconds=3))
    (task,) = mid.tasks
    assert (task.name, task.status, task.node, task.retries) == ("resize", "started", "b", 1)
    assert [n.status for n in mid.nodes] == ["online"]
    end = log.state_at(T0 + timedelta(seconds=9))
    assert end.tasks == [] and end.finished == {"succeeded": 1}
    assert [n.status for n in end.nodes] == ["draining"]
    assert log.state_at(T0 - timedelta(seconds=1)).op_seq == 0


def test_event_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OpLogError, match="not a node event"):
        OpLog(sqlite_store(tmp_path)).append(OpKind.NODE, "n", OpEvent.STARTED)


def test_pruned_history_is_refused_not_invented(tmp_path: Path) -> None:
    from vox_flow.config import Settings
    from vox_flow.store.retention import prune

    store = sqlite_store(tmp_path)
    log = OpLog(store, snapshot_every=16)
    log.append_many([NewOp(OpKind.TASK, f"t{i}", OpEvent.SUBMITTED, {}, T0 + timedelta(seconds=i))
                     for i in range(40)])  # fmt: skip
    later = T0 + timedelta(days=200)
    pruned = prune(store, Settings(oplog_retention_days=90), now=int(later.timestamp() * 1e6))
    assert (pruned.ops, pruned.op_snapshots) == (32, 1)
    assert len(log.state_at(T0 + timedelta(seconds=39)).tasks) == 40
    with pytest.raises(OpLogError, match="pruned"):
        log.state_at(T0 + timedelta(seconds=3))


def _head(store: Store) -> tuple[int, int, int | None]:
    with store.read() as conn:
        row = conn.exec_driver_sql("SELECT seq, time_us, fence FROM op_head").one()
    return row[0], row[1], row[2]


def test_a_write_with_an_older_token_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    log = OpLog(store, snapshot_every=16)
    batch = [NewOp(OpKind.TASK, f"t{i}", OpEvent.RECEIVED, {}, T0) for i in range(20)]
    log.append_many(batch[:10], fence=2)
    head = _head(store)
    assert head[2] == 2
    with pytest.raises(FencedOut, match="token 1 is older than 2") as refused:
        log.append_many(batch[10:], fence=1)  # would cross a snapshot boundary, too
    assert (refused.value.token, refused.value.latest) == (1, 2)
    assert _head(store) == head
    assert [op.subject for op in log.ops()] == [f"t{i}" for i in range(10)]
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM op_snapshots").scalar_one() == 0
    # The current leader, a newer one, and a write without a token all go through.
    log.append(OpKind.TASK, "t10", OpEvent.RECEIVED, fence=2)
    log.append(OpKind.TASK, "t11", OpEvent.RECEIVED, fence=3)
    log.append(OpKind.TASK, "t12", OpEvent.RECEIVED)
    assert _head(store)[::2] == (13, 3)
    with pytest.raises(FencedOut):
        log.append(OpKind.TASK, "t13", OpEvent.RECEIVED, fence=2)
    assert _head(store)[0] == 13


def test_a_new_leader_fences_the_log_before_it_writes_anything(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    log = OpLog(store)
    log.append(OpKind.NODE, "n1", OpEvent.JOINED, fence=4)
    log.fence(5)  # the new leader, before it subscribes to events
    with pytest.raises(FencedOut):
        log.append(OpKind.NODE, "n2", OpEvent.JOINED, fence=4)  # the old one, waking up
    with pytest.raises(FencedOut):
        log.fence(4)
    log.fence(5)  # claiming again is harmless
    assert [op.subject for op in log.ops()] == ["n1"]
    assert _head(store)[::2] == (1, 5)


def test_latest_state_includes_ops_stamped_ahead_of_the_clock(tmp_path: Path) -> None:
    log = OpLog(sqlite_store(tmp_path), snapshot_every=16)
    future = datetime.now(UTC) + timedelta(hours=1)  # a worker whose clock runs ahead
    assert log.latest_state().nodes == [] and log.latest_state().op_seq == 0
    log.append_many([NewOp(OpKind.NODE, f"n{i}", OpEvent.JOINED, {}, future) for i in range(20)])
    log.append(OpKind.NODE, "n3", OpEvent.LEFT, at=future)
    log.append(OpKind.NODE, "n4", OpEvent.PAUSED, at=future)
    assert log.state_at(datetime.now(UTC)).nodes == []
    latest = log.latest_state()
    assert latest.op_seq == 22 and latest.at == future
    status = {n.node_id: n.status for n in latest.nodes}
    assert len(status) == 20 and status["n3"] == "offline" and status["n4"] == "paused"
