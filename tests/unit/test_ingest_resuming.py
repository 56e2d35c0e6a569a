"""A new control-service leader's event mapper, seeded from the op-log: no second ``joined``."""

from __future__ import annotations

from datetime import UTC, datetime

from vox_flow.contracts.oplog import NodeState, OpEvent, StateAt
from vox_flow.oplog.ingest import EventMapper

T = datetime(2030, 1, 1, tzinfo=UTC)


def _state(**nodes: str) -> StateAt:
    return StateAt(
        at=T,
        op_seq=len(nodes),
        tasks=[],
        nodes=[NodeState(node_id=n, status=s, updated_at=T) for n, s in nodes.items()],
        finished={},
    )


def test_nodes_the_op_log_shows_present_are_not_joined_again() -> None:
    mapper = EventMapper.resuming(_state(a="online", b="draining", c="offline"), heard_at=1000.0)
    for host in ("a", "b"):
        assert (
            mapper.op({"type": "worker-heartbeat", "hostname": host, "timestamp": 1001.0}) is None
        )
    back = mapper.op({"type": "worker-heartbeat", "hostname": "c", "timestamp": 1001.0})
    assert back is not None and (back.subject, back.event) == ("c", OpEvent.JOINED)


def test_a_seeded_node_that_stays_silent_leaves_counting_from_the_takeover() -> None:
    mapper = EventMapper.resuming(_state(a="online", b="online"), heard_at=1000.0, offline_after=60)
    mapper.op({"type": "worker-heartbeat", "hostname": "b", "timestamp": 1050.0})
    assert mapper.silent(now=1059.0) == []
    [left] = mapper.silent(now=1060.0)
    assert (left.subject, left.event, left.data) == ("a", OpEvent.LEFT, {"reason": "silent"})
    assert mapper.silent(now=1109.0) == [] and len(mapper.silent(now=1110.0)) == 1
