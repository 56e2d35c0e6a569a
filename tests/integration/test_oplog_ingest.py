"""Celery's events from a real worker on the real Redis broker become op-log ops."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
from celery import Celery

from tests.integration.conftest import StartWorker
from tests.unit.conftest_store import sqlite_store
from vox_flow.contracts.audit import OpEvent, OpKind
from vox_flow.control.ingest import ingest
from vox_flow.control.oplog import OpLog

pytestmark = pytest.mark.integration

# The tiny app the worker subprocess runs (-A tests.integration.test_oplog_ingest:app).
app = Celery("vf_ingest_test", broker=os.environ.get("VOX_FLOW_BROKER_URL"))
app.conf.update(
    task_send_sent_event=True,
    worker_send_task_events=True,
    task_default_queue="vf-ingest",
    broker_connection_retry_on_startup=True,
)


@app.task(name="ingest.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="ingest.boom")
def boom() -> None:
    raise ValueError("boom")


@app.task(name="ingest.flaky", bind=True, max_retries=1, default_retry_delay=0)
def flaky(self: object, attempt: int = 0) -> str:
    if not getattr(self, "request").retries:  # noqa: B009 - typed as object here
        raise self.retry(exc=RuntimeError("again"), countdown=0)
    return "ok"


def test_worker_events_become_ops(
    redis_url: str, tmp_path: Path, start_worker: StartWorker
) -> None:
    app.conf.broker_url = redis_url
    oplog = OpLog(sqlite_store(tmp_path))
    stop = threading.Event()
    thread = threading.Thread(target=ingest, args=(app, oplog), kwargs={"stop": stop})
    thread.start()
    try:
        time.sleep(1.0)  # the receiver binds its queue before the first event is sent
        args = [sys.executable, "-m", "celery", "-A", "tests.integration.test_oplog_ingest:app",
                "worker", "-E", "-P", "solo", "-c", "1", "-n", "w1@%h", "-Q", "vf-ingest",
                "-l", "info", "--without-mingle", "--without-gossip"]  # fmt: skip
        worker = start_worker("w1", args=args)
        ids = [add.delay(2, 3).id, boom.delay().id, flaky.delay().id]
        deadline = time.monotonic() + 60
        want = {(ids[0], OpEvent.SUCCEEDED), (ids[1], OpEvent.FAILED), (ids[2], OpEvent.RETRIED),
                (ids[2], OpEvent.SUCCEEDED)}  # fmt: skip
        while time.monotonic() < deadline:
            seen = {(op.subject, op.event) for op in oplog.ops()}
            if want <= seen:
                break
            time.sleep(0.3)
        worker.stop()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(op.event == OpEvent.LEFT for op in oplog.ops()):
                break
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(30)
    ops = list(oplog.ops())
    seen = {(op.subject, op.event) for op in ops}
    assert want <= seen, seen
    for task_id in ids:
        assert (task_id, OpEvent.SUBMITTED) in seen and (task_id, OpEvent.STARTED) in seen
    nodes = [(op.subject, op.event) for op in ops if op.kind == OpKind.NODE]
    assert nodes[0][1] == OpEvent.JOINED and nodes[-1][1] == OpEvent.LEFT
    assert nodes[0][0].startswith("w1@")
    final = oplog.state_at(ops[-1].time)
    assert final.tasks == [] and final.finished == {"failed": 1, "succeeded": 2}
    assert [n.status for n in final.nodes] == ["offline"]
    started = next(op for op in ops if op.event == OpEvent.STARTED)
    assert started.data["node"].startswith("w1@")
    received = next(op for op in ops if op.event == OpEvent.RECEIVED)
    assert received.data["name"].startswith("ingest.")
