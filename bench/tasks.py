"""No-op tasks for the throughput benchmark: one typed, one plain, on the vox_flow app."""

from __future__ import annotations

from kombu import Queue
from pydantic import BaseModel

from vox_flow.app import app
from vox_flow.tasks import typed_task

PLAIN_QUEUE = "bench.plain"


class Empty(BaseModel):
    n: int = 0


@typed_task(app, name="bench.typed_noop")
def typed_noop(payload: Empty) -> Empty:
    return payload


app.amqp.queues.select_add(Queue(PLAIN_QUEUE))


@app.task(name="bench.plain_noop", queue=PLAIN_QUEUE)
def plain_noop(n: int = 0) -> int:
    return n
