"""The typed tasks' Redis result backend on a real server: a stored result carries its run's
buffered attempt records, in the same transaction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import redis
from celery import states

from vox_flow._celery.backend import ResultBackend, for_typed_tasks
from vox_flow.app import create_app
from vox_flow.attempts import AttemptLog
from vox_flow.config import Settings
from vox_flow.contracts.task import Attempt, AttemptOutcome

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def _setup(url: str) -> tuple[ResultBackend, AttemptLog, redis.Redis]:
    app = create_app(Settings(broker_url=url))
    client = redis.Redis.from_url(url)
    log = AttemptLog(client, 600)
    backend = for_typed_tasks(app, lambda: log)
    assert isinstance(backend, ResultBackend)
    return backend, log, client


def _attempt(outcome: AttemptOutcome = AttemptOutcome.SUCCEEDED) -> Attempt:
    return Attempt(number=1, node="w1", started_at=WHEN, ended_at=WHEN, outcome=outcome)


def test_the_result_s_write_carries_the_buffered_attempts(redis_url: str) -> None:
    backend, log, client = _setup(redis_url)
    task_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    log.record_soon(task_id, _attempt())
    log.record_soon(other, _attempt())
    calls_before = client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    backend.store_result(task_id, {"value": 1}, states.SUCCESS)
    # One MULTI/EXEC: the record and the result together.
    assert client.info("commandstats")["cmdstat_exec"]["calls"] == calls_before + 1
    assert [
        Attempt.model_validate_json(r).outcome
        for r in client.lrange(f"vf:attempts:{task_id}", 0, -1)
    ] == ["succeeded"]
    assert backend.get_task_meta(task_id)["status"] == states.SUCCESS
    # Celery's own write, kept: SETEX with the result's expiry (its PUBLISH wakes waiters).
    assert 0 < client.ttl(backend.get_key_for_task(task_id)) <= backend.expires
    assert 0 < client.ttl(f"vf:attempts:{task_id}") <= 600
    assert not client.exists(f"vf:attempts:{other}")  # another run's record stays buffered
    log.flush()
    assert client.llen(f"vf:attempts:{other}") == 1
    assert client.llen(f"vf:attempts:{task_id}") == 1  # written once


def test_records_a_write_did_not_carry_go_back_to_the_buffer(redis_url: str) -> None:
    backend, log, client = _setup(redis_url)
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, {"value": 1}, states.SUCCESS)
    # A later delivery's records, when a success is stored already: Celery writes nothing,
    # and the records must not be lost with the write that did not happen.
    log.record_soon(task_id, _attempt(AttemptOutcome.SKIPPED))
    backend.store_result(task_id, {"value": 2}, states.SUCCESS)
    assert not client.exists(f"vf:attempts:{task_id}")
    log.flush()
    assert [
        Attempt.model_validate_json(r).outcome
        for r in client.lrange(f"vf:attempts:{task_id}", 0, -1)
    ] == ["skipped"]
