"""`vox-flow worker` through a broker outage: a child dies while the broker is away.

The session's Redis server is SIGKILLed and started again on the same port from its AOF
(every write kept: appendfsync always). The supervisor must keep running and supervising,
settle the dead child's run once the broker is back (an attempt counted: ``lost``, then a
success), and shut down cleanly even while the broker is away, removing its run slots.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.integration import tasks
from tests.integration.conftest import StartWorker
from tests.integration.workers import WorkerProcess, vox_flow_worker_args
from vox_flow.app import app
from vox_flow.broker.server import RedisServer
from vox_flow.submit import submit

FAST = {"lease_seconds": "6", "lease_renew_seconds": "0.5", "reaper_interval_seconds": "0.5"}


def _child_running(item_id: str) -> int:
    """The pid of the child that started the slow run ``item_id`` (its start note)."""
    note = wait_for(lambda: app.redis.lindex(f"test:slow-start:{item_id}", 0), 60, "the run")
    return int(note.split()[0])


def _run_slot_dirs(supervisor_pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"vox-flow-worker-{supervisor_pid}-*"))


def _kill_a_child_while_the_broker_is_away(
    redis_server: RedisServer, worker: WorkerProcess, item_id: str
) -> None:
    child = _child_running(item_id)
    redis_server.stop(signal.SIGKILL)
    os.kill(child, signal.SIGKILL)
    assert worker.process is not None
    wait_for(
        lambda: "wait to be settled" in worker.output() or worker.process.poll() is not None,
        20,
        "the supervisor to wait for the broker",
    )
    time.sleep(1.0)  # a few more turns of its loop with the broker away
    assert worker.process.poll() is None, f"the supervisor exited: {worker.output()[-3000:]}"


@pytest.mark.slow
def test_a_child_that_dies_while_the_broker_is_away_is_settled_once_it_is_back(
    redis_url: str, redis_server: RedisServer, start_worker: StartWorker
) -> None:
    worker = start_worker("sup", args=vox_flow_worker_args(processes=2), **FAST)
    assert worker.process is not None
    handle = submit(tasks.slow, {"id": "s", "seconds": 2})
    _kill_a_child_while_the_broker_is_away(redis_server, worker, "s")
    redis_server.start()
    assert handle.result(timeout=60).value == 2
    attempts = wait_for(lambda: len(a := handle.attempts()) >= 2 and a, 10, "both attempts")
    # Settled by the supervisor (an attempt counted), not taken back by a lease reaper.
    assert [(a.outcome, a.number) for a in attempts] == [("lost", 1), ("succeeded", 2)]
    assert attempts[0].error_type == "WorkerLostError"
    pid = worker.process.pid
    # Named after their supervisor: vf<i>-<supervisor pid>@<node>.
    assert re.fullmatch(rf"vf[12]-{pid}@.+", attempts[0].node), attempts[0].node
    assert re.fullmatch(rf"vf[12]-{pid}@.+", attempts[1].node), attempts[1].node
    assert _run_slot_dirs(pid)
    worker.stop()
    assert worker.process.returncode == 0, worker.output()[-3000:]
    assert _run_slot_dirs(pid) == []  # removed on exit


@pytest.mark.slow
def test_a_shutdown_while_the_broker_is_away_exits_cleanly(
    redis_url: str, redis_server: RedisServer, start_worker: StartWorker
) -> None:
    worker = start_worker("sup", args=vox_flow_worker_args(processes=1), **FAST)
    assert worker.process is not None
    pid = worker.process.pid
    submit(tasks.slow, {"id": "t", "seconds": 30})
    _kill_a_child_while_the_broker_is_away(redis_server, worker, "t")
    os.kill(pid, signal.SIGTERM)  # the supervisor alone: its restarted child gets SIGTERM
    assert worker.process.wait(40) == 0, worker.output()[-3000:]
    assert "unsettled" in worker.output()
    assert _run_slot_dirs(pid) == []
    redis_server.start()  # the message is still reserved: its lease lapses, a reaper takes it
