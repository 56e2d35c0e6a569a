"""Celery's events from a real worker on the real Redis broker become op-log ops."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.integration.conftest import StartWorker
from tests.unit.conftest_store import sqlite_store
from vox_flow.app import app as vox_app
from vox_flow.contracts.oplog import OpEvent, OpKind
from vox_flow.oplog.ingest import ingest
from vox_flow.oplog.log import OpLog

pytestmark = pytest.mark.integration

# The tiny app the worker subprocess runs (-A tests.integration.test_oplog_ingest:app), on
# vox_flow's broker (configured by the test session here, from its environment there).
app = Celery("vf_ingest_test", broker=vox_app.conf.broker_url)
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


def _ingesting(redis_url: str, tmp_path: Path) -> tuple[OpLog, threading.Event, threading.Thread]:
    """An ingester thread feeding a fresh SQLite op-log, once its subscription is live
    (set ``stop`` and join the thread to end it)."""
    app.conf.broker_url = redis_url
    oplog = OpLog(sqlite_store(tmp_path))
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=ingest, args=(app, oplog), kwargs={"stop": stop, "ready": ready}
    )
    thread.start()
    if not ready.wait(10):
        stop.set()
        thread.join(30)
        raise AssertionError("the ingester never subscribed")
    return oplog, stop, thread


def test_worker_events_become_ops(
    redis_url: str, tmp_path: Path, start_worker: StartWorker
) -> None:
    oplog, stop, thread = _ingesting(redis_url, tmp_path)
    try:
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


def test_no_event_is_lost_across_idle_periods(redis_url: str, tmp_path: Path) -> None:
    """Every event sent after an idle spell longer than kombu's 1 s drain timeout is an op.

    Celery's ``Receiver.capture`` gives up its subscription after an idle second and
    subscribes again a few ms later; an event published in that gap was lost. So each event
    here waits 1.5 s, or is sent the moment the broker's count of pattern subscriptions (the
    ingester's, here) drops.
    """
    oplog, stop, thread = _ingesting(redis_url, tmp_path)
    client = redis.Redis.from_url(redis_url)
    task = {"name": "ingest.add"}
    sends = [("worker-online", {}), ("task-received", {"uuid": "t1", **task}),
             ("task-received", {"uuid": "t2", **task}), ("worker-offline", {})]  # fmt: skip
    drops = 0
    try:
        subscribed = client.pubsub_numpat()
        assert subscribed >= 1
        with app.events.default_dispatcher(hostname="w9@idle") as dispatcher:
            for kind, fields in sends:
                idle_until = time.monotonic() + 1.5
                while time.monotonic() < idle_until:
                    if client.pubsub_numpat() < subscribed:
                        drops += 1
                        break
                    time.sleep(0.001)  # the old gap lasted 4-7 ms
                dispatcher.send(kind, **fields)
        deadline = time.monotonic() + 10
        while len(list(oplog.ops())) < len(sends) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
        client.close()
    ops = [(op.subject, op.event) for op in oplog.ops()]
    assert ops == [("w9@idle", OpEvent.JOINED), ("t1", OpEvent.RECEIVED),
                   ("t2", OpEvent.RECEIVED), ("w9@idle", OpEvent.LEFT)], (ops, drops)  # fmt: skip
