"""Event mapping of the op-log ingester: nodes that stop talking have left."""

from __future__ import annotations

from vox_flow.contracts.oplog import OpEvent
from vox_flow.oplog.ingest import EventMapper


def test_a_silent_node_leaves_after_the_offline_bound() -> None:
    mapper = EventMapper(offline_after=60)
    joined = mapper.op({"type": "worker-online", "hostname": "w1@a", "timestamp": 1000.0})
    assert joined is not None and joined.event == OpEvent.JOINED
    mapper.op({"type": "worker-heartbeat", "hostname": "w1@a", "timestamp": 1030.0})
    assert mapper.silent(now=1089.0) == []  # heard 59 s ago: still online
    [left] = mapper.silent(now=1090.0)
    assert (left.subject, left.event, left.data) == ("w1@a", OpEvent.LEFT, {"reason": "silent"})
    assert left.at is not None and left.at.timestamp() == 1090.0
    assert mapper.silent(now=2000.0) == []  # left once
    back = mapper.op({"type": "worker-heartbeat", "hostname": "w1@a", "timestamp": 2001.0})
    assert back is not None and back.event == OpEvent.JOINED


def test_a_node_that_said_goodbye_is_not_left_twice() -> None:
    mapper = EventMapper(offline_after=60)
    mapper.op({"type": "worker-online", "hostname": "w1@a", "timestamp": 1000.0})
    left = mapper.op({"type": "worker-offline", "hostname": "w1@a", "timestamp": 1001.0})
    assert left is not None and left.event == OpEvent.LEFT
    assert mapper.silent(now=5000.0) == []
