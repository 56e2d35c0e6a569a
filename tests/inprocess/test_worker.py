"""The in-process worker is a vox_flow worker: its bootsteps run and its runs go through
vox_flow's executor (what makes the other tests of this tier worth their name)."""

from __future__ import annotations

import time

from tests.helpers import queue_length, recorded_attempts, wait_for
from tests.inprocess.conftest import StartWorker
from tests.integration import tasks
from vox_flow._celery.layout import layout
from vox_flow.app import app
from vox_flow.submit import submit
from vox_flow.worker.runtime import WorkerRuntime


def test_the_lease_keeper_renews_the_messages_the_worker_holds(
    redis_url: str, start_worker: StartWorker
) -> None:
    # The fixture checked that vox_flow's steps run; this checks what the lease step attached.
    start_worker("w1")
    keeper = WorkerRuntime.of(app).leases  # what the keeper thread runs every renewal period
    assert keeper is not None

    handle = submit(tasks.slow, {"id": "held", "seconds": 1.5})
    wait_for(lambda: app.redis.llen("test:slow-start:held"), 10, "the run to start")
    index = layout(app).unacked_index
    [(tag, reserved_at)] = app.redis.zrange(index, 0, -1, withscores=True)
    before = time.time()
    assert keeper.renew() == 1  # the one message this worker's channel holds: the running one
    renewed_at = app.redis.zscore(index, tag)
    assert renewed_at is not None and renewed_at >= before > reserved_at

    assert handle.result(timeout=30).value == 1
    wait_for(lambda: app.redis.zcard(index) == 0, 5, "the run's message to be acknowledged")
    keeper.renew()
    assert app.redis.zcard(index) == 0  # an acknowledged message's lease is not resurrected


def test_runs_go_through_vox_flows_executor_and_the_worker_serves_every_typed_queue(
    redis_url: str, start_worker: StartWorker
) -> None:
    start_worker("w1")
    handles = [
        submit(tasks.echo, {"id": "a", "value": 1}),
        submit(tasks.add_one, {"id": "b", "value": 1}),
    ]
    assert [h.result(timeout=30).value for h in handles] == [1, 2]
    for handle in handles:
        [attempt] = recorded_attempts(handle, 1)  # only vox_flow's executor records attempts
        assert attempt.outcome == "succeeded" and attempt.node == "w1@inprocess"
    assert queue_length(tasks.echo.queue) == queue_length(tasks.add_one.queue) == 0
