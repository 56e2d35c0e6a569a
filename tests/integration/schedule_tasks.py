"""A typed task the schedule tests and benchmark fire: it records its fire key and start time."""

from __future__ import annotations

import time

from celery import current_task
from pydantic import BaseModel

from vox_flow.app import app
from vox_flow.contracts.task import HEADER_KEY
from vox_flow.tasks import typed_task


class FireLog(BaseModel):
    list_key: str
    seconds: float = 0.0


class Logged(BaseModel):
    key: str


@typed_task(app, name="tests.schedule.record_fire")
def record_fire(payload: FireLog) -> Logged:
    """RPUSH ``"<fire key> <start time>"`` onto ``list_key`` (then sleep ``seconds``)."""
    started = time.time()
    key = str((current_task.request.headers or {}).get(HEADER_KEY, ""))
    app.redis.rpush(payload.list_key, f"{key} {started:.6f}")
    if payload.seconds:
        time.sleep(payload.seconds)
    return Logged(key=key)


class SlowRun(BaseModel):
    list_key: str
    seconds: float


@typed_task(app, name="tests.schedule.slow_run")
def slow_run(payload: SlowRun) -> Logged:
    """RPUSH ``"start <fire key> <task id> <time>"``, sleep ``seconds``, then RPUSH ``"end
    ..."``: a run stopped part-way (revoked and terminated) leaves a start without an end."""
    key = str((current_task.request.headers or {}).get(HEADER_KEY, ""))
    task_id = current_task.request.id
    app.redis.rpush(payload.list_key, f"start {key} {task_id} {time.time():.6f}")
    time.sleep(payload.seconds)
    app.redis.rpush(payload.list_key, f"end {key} {task_id} {time.time():.6f}")
    return Logged(key=key)
