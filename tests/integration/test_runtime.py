"""The worker runtime against real Redis servers: one runtime per (process, app).

Two apps in one process, each on its own Redis server, each run by Celery's embedded worker
(tests/inprocess/private.py) in this process: each app's idempotency claims must be renewed
on that app's server. The old runtime started one renewal thread per process, bound
to the first app that ran a keyed task, so the second app's claims lapsed mid-run (and the
effect could then run twice).
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import BaseModel

from tests.inprocess.private import embedded_worker, private_app
from vox_flow.application import VoxFlow
from vox_flow.broker.server import RedisServer
from vox_flow.keyspace import idem_claim, idem_done
from vox_flow.submit import submit
from vox_flow.tasks import typed_task
from vox_flow.worker.runtime import WorkerRuntime
from vox_flow.worker.settle import _compare_and_run

LEASE = 2.0  # the shortest lease Settings allows is just over 1 s
FAST = {"lease_seconds": LEASE, "lease_renew_seconds": 0.2, "reaper_interval_seconds": 0.2}


class Job(BaseModel):
    id: str


class Done(BaseModel):
    id: str


def _app(url: str) -> VoxFlow:
    return private_app(url, **FAST)


def _worker(app: VoxFlow, name: str) -> AbstractContextManager[Any]:
    return embedded_worker(app, name)


def _pexpires(client: redis.Redis) -> int:
    stats: dict[str, dict[str, int]] = client.info("commandstats")  # type: ignore[assignment]
    return stats.get("cmdstat_pexpire", {}).get("calls", 0)


def _watch_the_claim(client: redis.Redis, claim: str) -> None:
    """Watch ``claim`` for longer than its lease: it must stay alive throughout and be
    renewed again and again (its time to live goes back up)."""
    deadline = time.monotonic() + 10
    while not client.exists(claim):
        assert time.monotonic() < deadline, "the run never claimed its key"
        time.sleep(0.02)
    claimed_at, last, renewals = time.monotonic(), LEASE * 1000, 0
    while time.monotonic() - claimed_at < LEASE * 1.5 or renewals < 3:
        ttl: int = client.pttl(claim)  # type: ignore[assignment]
        assert ttl > 0, f"the claim lapsed mid-run ({ttl}) after {renewals} renewal(s)"
        renewals += ttl > last + 50
        last = ttl
        time.sleep(0.02)


@pytest.mark.slow
def test_each_app_keeps_its_claims_alive_on_its_own_redis(
    redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    other = RedisServer(tmp_path / "second", binary=redis_server.binary)
    other.start()
    try:
        first_app, second_app = _app(redis_url), _app(other.url)
        first_redis, second_redis = redis.Redis.from_url(redis_url), redis.Redis.from_url(other.url)
        suffix = uuid.uuid4().hex[:8]  # Celery shares task names between a process's apps
        release, runs = threading.Event(), list[str]()

        @typed_task(first_app, name=f"test.runtime.first.{suffix}")
        def quick(job: Job) -> Done:
            return Done(id=job.id)

        @typed_task(second_app, name=f"test.runtime.second.{suffix}")
        def held(job: Job) -> Done:
            runs.append(job.id)
            release.wait(30)
            return Done(id=job.id)

        # The first app runs a keyed task first: the old runtime bound its one renewal
        # thread to this app for the rest of the process.
        with _worker(first_app, "first"):
            assert submit(quick, {"id": "a"}, idempotency_key="first-key").result(10).id == "a"
        assert first_redis.exists(idem_done(quick.name, "first-key"))

        key = f"second-key-{suffix}"
        claim = idem_claim(held.name, key)
        pexpires_on_first = _pexpires(first_redis)
        with _worker(second_app, "second"):
            handle = submit(held, {"id": "b"}, idempotency_key=key)
            try:
                _watch_the_claim(second_redis, claim)
                assert runs == ["b"]
            finally:
                release.set()  # on a failure too: the worker stops once its run returns
            assert handle.result(10).id == "b"
        assert second_redis.exists(idem_done(held.name, key)) and not second_redis.exists(claim)
        # Nothing of the second app's run reached the first server: no renewal sent there,
        # no key of its written there.
        assert _pexpires(first_redis) == pexpires_on_first
        assert not [k for k in first_redis.scan_iter() if key.encode() in k or handle.id in str(k)]
        assert WorkerRuntime.of(first_app) is not WorkerRuntime.of(second_app)
        assert WorkerRuntime.of(second_app).held_claims() == {}
        for app in (first_app, second_app):
            WorkerRuntime.of(app).stop()
    finally:
        other.stop()


def test_compare_and_run_runs_every_write_or_none(redis_url: str) -> None:
    """The settle step's one Redis step: its writes run only if the reserved message is
    still there exactly as read, and then all of them run."""
    client = redis.Redis.from_url(redis_url)
    client.hset("unacked", "tag-1", b"message")
    writes = [
        ("HDEL", "unacked", "tag-1"),
        ("RPUSH", "queue", "message"),
        ("ZADD", "index", "NX", "12.5", "tag-1"),
        ("EXPIRE", "queue", "600"),
    ]
    assert not _compare_and_run(client, "unacked", "tag-1", b"another message", writes)
    assert client.hget("unacked", "tag-1") == b"message" and not client.exists("queue", "index")
    assert _compare_and_run(client, "unacked", "tag-1", b"message", writes)
    assert not client.hexists("unacked", "tag-1")
    assert client.lrange("queue", 0, -1) == [b"message"] and 0 < client.ttl("queue") <= 600
    assert client.zscore("index", "tag-1") == 12.5
    assert not _compare_and_run(client, "unacked", "tag-1", b"message", writes)  # gone now
    assert client.llen("queue") == 1
