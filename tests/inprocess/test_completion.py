"""A keyed run's completion against a broker that goes away, and attempts seen with results.

The outage tests run a private app on a private Redis server (tests/inprocess/private.py),
SIGKILLed while a run is in its function and started again on the same port from its AOF:
the session's server is left alone. The first outage is shorter than the lease (the
completion must be stored once the broker is back, and the effect run once); the second
outlasts it (the attempt is unconfirmed, and the message runs again).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import BaseModel

from tests.helpers import wait_for
from tests.inprocess.conftest import StartWorker
from tests.inprocess.private import embedded_worker, private_app
from tests.integration import tasks
from vox_flow._celery.layout import layout
from vox_flow.application import VoxFlow
from vox_flow.broker.server import RedisServer
from vox_flow.keyspace import idem_claim, idem_done
from vox_flow.submit import submit
from vox_flow.tasks import TypedTask, typed_task


class Job(BaseModel):
    id: str


class Done(BaseModel):
    id: str


class Gate:
    """What a run of the held task does: note itself, then wait for the test."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def task(self, app: VoxFlow) -> TypedTask[Job, Done]:
        # Celery shares task names between a process's apps: one name per test.
        @typed_task(app, name=f"test.completion.held.{uuid.uuid4().hex[:8]}")
        def held(job: Job) -> Done:
            self.runs.append(job.id)
            self.started.set()
            if len(self.runs) == 1:  # only the first run waits for the outage
                assert self.release.wait(30)
            return Done(id=job.id)

        return held


@pytest.fixture
def broker(tmp_path: Path, redis_server: RedisServer) -> Iterator[RedisServer]:
    """A private server that keeps every write (the test kills it)."""
    server = RedisServer(tmp_path / "broker", binary=redis_server.binary, appendfsync="always")
    server.start()
    yield server
    server.stop()


def _outage(broker: RedisServer, gate: Gate, seconds: float) -> None:
    """SIGKILL the broker while the first run is in its function, let the run return, and
    start the broker again ``seconds`` later."""
    assert gate.started.wait(30), "the run never started"
    broker.stop(signal.SIGKILL)
    gate.release.set()
    time.sleep(seconds)
    broker.start()


def test_a_completion_that_meets_a_broker_outage_is_stored_once_it_is_back(
    broker: RedisServer,
) -> None:
    app = private_app(broker.url, lease_seconds=6, lease_renew_seconds=0.3)
    gate = Gate()
    held = gate.task(app)
    client = redis.Redis.from_url(broker.url)
    with embedded_worker(app, "blip"):
        handle = submit(held, {"id": "a"}, idempotency_key="charge-a")
        _outage(broker, gate, 1.5)  # well inside the 6 s lease
        assert handle.result(timeout=30).id == "a"
        # Stored when the result was: one attempt, a success, and no second run.
        assert [(a.outcome, a.number) for a in handle.attempts()] == [("succeeded", 1)]
        assert client.exists(idem_done(held.name, "charge-a"))
        assert not client.exists(idem_claim(held.name, "charge-a"))
        wait_for(lambda: client.hlen(layout(app).unacked) == 0, 10, "the ack")
        time.sleep(1.0)  # a redelivery would have started by now
    assert gate.runs == ["a"]


@pytest.mark.slow
def test_a_completion_not_stored_within_the_lease_is_unconfirmed_and_runs_again(
    broker: RedisServer,
) -> None:
    lease = 2.0
    app = private_app(broker.url, lease_seconds=lease, lease_renew_seconds=0.2)
    gate = Gate()
    held = gate.task(app)
    client = redis.Redis.from_url(broker.url)
    with embedded_worker(app, "long"):
        handle = submit(held, {"id": "b"}, idempotency_key="charge-b")
        _outage(broker, gate, lease + 1.5)  # the claim could lapse meanwhile
        assert handle.result(timeout=60).id == "b"
        attempts = wait_for(lambda: len(a := handle.attempts()) >= 2 and a, 10, "two attempts")
        # The first run's effect happened, but nothing could record it: not a success.
        assert [a.outcome for a in attempts] == ["unconfirmed", "succeeded"]
        assert attempts[0].error_type == "CompletionNotStored"
        assert client.exists(idem_done(held.name, "charge-b"))
    assert gate.runs == ["b", "b"]


def test_attempts_are_recorded_as_soon_as_the_result_is(
    redis_url: str, start_worker: StartWorker
) -> None:
    """A success's attempt record is buffered; the result's write carries it (no extra
    round trip), so whoever got the result reads its attempt at once."""
    start_worker("w1")
    missing = []
    for i in range(50):
        handle = submit(tasks.echo, {"id": str(i), "value": i})
        assert handle.result(timeout=30).value == i
        attempts = handle.attempts()  # at once: no polling
        if [(a.outcome, a.number) for a in attempts] != [("succeeded", 1)]:
            missing.append((i, attempts))
    assert missing == []
