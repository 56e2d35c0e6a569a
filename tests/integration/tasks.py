"""Typed tasks the tests run in real workers: subprocesses (VOX_FLOW_TASK_MODULES) and the
in-process tier's worker (tests/inprocess). ``poison`` kills the process running it and
``stuck`` needs a hard time limit: only subprocess workers may run them."""

from __future__ import annotations

import os
import signal
import time

from pydantic import BaseModel, Field

from vox_flow.app import app
from vox_flow.retry import RetryPolicy
from vox_flow.tasks import typed_task


class Item(BaseModel):
    id: str
    value: int = Field(ge=0)


class Echo(BaseModel):
    id: str
    value: int


class Sleep(BaseModel):
    id: str
    seconds: float


class Numbers(BaseModel):
    items: list[Echo]


class Sum(BaseModel):
    total: int


class Transient(Exception):
    """A failure worth retrying."""


class Permanent(Exception):
    """A failure no retry will fix."""


def _note(kind: str, item_id: str, value: str = "") -> None:
    """Leave a trace of a run in Redis for the test to read."""
    app.redis.rpush(f"test:{kind}:{item_id}", value or str(time.time()))


@typed_task(app)
def echo(item: Item) -> Echo:
    return Echo(id=item.id, value=item.value)


@typed_task(app)
def add_one(item: Echo) -> Echo:
    return Echo(id=item.id, value=item.value + 1)


@typed_task(app)
def total(numbers: Numbers) -> Sum:
    return Sum(total=sum(n.value for n in numbers.items))


@typed_task(app, retry=RetryPolicy(max_attempts=4, base_delay=0.4, max_delay=2.0))
def flaky(item: Item) -> Echo:
    """Fails with Transient ``value`` times, then succeeds."""
    runs = app.redis.incr(f"test:flaky:{item.id}")
    if runs <= item.value:
        raise Transient(f"run {runs} of {item.id} fails")
    return Echo(id=item.id, value=runs)


@typed_task(
    app,
    retry=RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=0.2, dont_retry_on=(Permanent,)),
)
def broken(item: Item) -> Echo:
    """value 0: a retryable failure every time; value 1: a non-retryable one; 2: passes
    when the test has set ``test:fixed:<id>``."""
    _note("broken", item.id)
    if item.value == 1:
        raise Permanent(f"{item.id} cannot work")
    if item.value == 2 and app.redis.exists(f"test:fixed:{item.id}"):
        return Echo(id=item.id, value=2)
    raise Transient(f"{item.id} failed again")


@typed_task(app, retry=RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=0.2))
def poison(item: Item) -> Echo:
    """Kills the process running it, every time."""
    _note("poison", item.id)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


@typed_task(app)
def slow(job: Sleep) -> Echo:
    """Notes which node started it, sleeps, notes the finish."""
    _note("slow-start", job.id, f"{os.getpid()} {time.time()}")
    time.sleep(job.seconds)
    _note("slow-done", job.id, f"{os.getpid()} {time.time()}")
    return Echo(id=job.id, value=int(job.seconds))


@typed_task(app)
def effect(item: Item) -> Echo:
    """An effect counted per id (the test checks it ran once per idempotency key)."""
    runs = app.redis.incr(f"test:effect:{item.id}")
    time.sleep(item.value / 1000)
    return Echo(id=item.id, value=runs)


@typed_task(app, time_limit=1.0, retry=RetryPolicy(max_attempts=2, base_delay=0.1))
def stuck(job: Sleep) -> Echo:
    """Sleeps past its 1 s hard time limit."""
    _note("stuck", job.id)
    time.sleep(job.seconds)
    return Echo(id=job.id, value=0)
