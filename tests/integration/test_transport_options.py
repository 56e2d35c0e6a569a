"""A user's ``broker_transport_options`` move kombu's keys; vox_flow follows them.

The app (prefixed_app.py) puts every kombu key under ``global_keyprefix`` and renames
``unacked`` / ``unacked_index``. A submit must land where a worker on the same options
consumes, the take-back of a dead worker's run must find it where kombu reserved it, and
event receivers (Flower's way) must see the run's task-sent event.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import pytest
import redis

from tests.helpers import wait_for
from tests.integration.conftest import StartWorker
from tests.integration.prefixed_app import (
    PREFIX,
    TRANSPORT_OPTIONS,
    Done,
    Prefixed,
    create,
    starts,
)
from tests.integration.workers import WorkerProcess
from vox_flow.config import Settings
from vox_flow.submit import submit

MODULE = "tests.integration.prefixed_app"
UNACKED = PREFIX + TRANSPORT_OPTIONS["unacked_key"]
UNACKED_INDEX = PREFIX + TRANSPORT_OPTIONS["unacked_index_key"]
FAST = {"lease_seconds": "3", "lease_renew_seconds": "0.5", "reaper_interval_seconds": "0.5"}


@pytest.fixture
def prefixed(redis_url: str) -> Prefixed:
    return create(Settings(broker_url=redis_url))


@pytest.fixture
def server(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def start_prefixed(start_worker: StartWorker, name: str) -> WorkerProcess:
    """A real ``celery worker`` of the prefixed app, with short leases."""
    args = [
        sys.executable, "-m", "celery", "-A", MODULE, "worker", "-P", "solo",
        "-n", f"{name}@%h", "-l", "info", "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    return start_worker(name, args=args, task_modules=MODULE, **FAST)


def test_a_submit_lands_under_the_prefix_and_a_worker_on_the_same_options_runs_it(
    prefixed: Prefixed, server: redis.Redis, start_worker: StartWorker
) -> None:
    handle = submit(prefixed.work, {"id": "a"})
    queue = prefixed.work.queue
    assert server.llen(PREFIX + queue) == 1 and not server.exists(queue)
    start_prefixed(start_worker, "p1")
    assert handle.result(timeout=30) == Done(id="a", runs=1)
    assert server.llen(PREFIX + queue) == 0


def test_a_run_lost_with_its_worker_comes_back_and_completes(
    prefixed: Prefixed, server: redis.Redis, start_worker: StartWorker
) -> None:
    first = start_prefixed(start_worker, "p1")
    handle = submit(prefixed.work, {"id": "s", "seconds": 1})
    wait_for(lambda: server.llen(starts("s")) == 1, 30, "the run to start on p1")
    # kombu reserved it under the prefixed, renamed keys: where the take-back must look.
    assert server.hlen(UNACKED) == 1 and server.zcard(UNACKED_INDEX) == 1
    assert not server.exists("unacked", "unacked_index", TRANSPORT_OPTIONS["unacked_key"])
    first.kill()
    start_prefixed(start_worker, "p2")
    assert handle.result(timeout=30) == Done(id="s", runs=2)
    first_pid, second_pid = server.lrange(starts("s"), 0, -1)
    assert first_pid != second_pid  # run again, by p2
    wait_for(lambda: server.hlen(UNACKED) == 0, 5, "the run to be acknowledged")


PROBE = "test-prefixed-probe"


def test_event_receivers_see_the_task_sent_event_under_the_prefix(prefixed: Prefixed) -> None:
    app = prefixed.app
    events: list[dict[str, Any]] = []
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(
            connection, handlers={"task-sent": events.append, PROBE: events.append}
        )
        with receiver.consumer_context(wakeup=False) as (conn, _, _):
            # Pub/sub: kombu subscribes in the first drain, so probe until our own event
            # comes back; from then on, an event on this channel cannot be missed.
            prober = app.events.Dispatcher(conn, buffer_while_offline=False)
            deadline = time.monotonic() + 10
            while not events and time.monotonic() < deadline:
                prober.send(PROBE)
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)
            assert events, "the receiver never saw its own probe"
            handle = submit(prefixed.work, {"id": "e"})
            deadline = time.monotonic() + 5
            while handle.id not in _uuids(events) and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)
    [sent] = [event for event in events if event.get("uuid") == handle.id]
    assert sent["type"] == "task-sent" and sent["name"] == prefixed.work.name
    assert sent["queue"] == prefixed.work.queue


def _uuids(events: list[dict[str, Any]]) -> list[str]:
    return [str(event.get("uuid")) for event in events]
