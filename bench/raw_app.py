"""Raw Celery, for comparison: a plain app with a no-op task, late ack, JSON, no vox_flow."""

from __future__ import annotations

import os

from celery import Celery

from vox_flow.app import app as vox_app

# vox_flow's broker: configured by the benchmark in its own process, read from the
# environment in the worker subprocesses.
app = Celery("raw", broker=vox_app.conf.broker_url, set_as_current=False)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue="raw",
    broker_connection_retry_on_startup=True,
    # kombu's own Redis transport unless the benchmark names another (its atomic-fetch pair).
    broker_transport=os.environ.get("BENCH_TRANSPORT") or None,
)


@app.task(name="raw.noop")
def noop(n: int = 0) -> int:
    return n
