"""Retries, dead letters and validation in a real (in-process) worker."""

from __future__ import annotations

import itertools

import pytest

from tests.helpers import recorded_attempts
from tests.inprocess.conftest import StartWorker
from tests.integration import tasks
from vox_flow.app import app
from vox_flow.deadletters.store import DeadLetterStore
from vox_flow.errors import TaskFailed
from vox_flow.submit import submit


def test_retry_delays_stay_within_the_policy(redis_url: str, start_worker: StartWorker) -> None:
    start_worker("w1")
    handle = submit(tasks.flaky, {"id": "f", "value": 3})  # fails 3 times, then succeeds
    assert handle.result(timeout=60).value == 4
    attempts = recorded_attempts(handle, 4)
    assert [a.outcome for a in attempts] == ["retrying"] * 3 + ["succeeded"]
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    policy = tasks.flaky.retry
    for earlier, later in itertools.pairwise(attempts):
        assert earlier.retry_in is not None and earlier.ended_at is not None
        # Full jitter: the chosen delay lies in [0, base * 2**(n-1)] capped at max_delay ...
        assert 0 <= earlier.retry_in <= policy.ceiling(earlier.number)
        # ... and the next attempt starts no sooner than that delay. The upper bound only
        # tells a countdown retry from a redelivery (a lapsed lease: 30 s or more); what
        # lies between is the worker's own scheduling, which a loaded 2-core box stretches.
        gap = (later.started_at - earlier.ended_at).total_seconds()
        assert earlier.retry_in - 0.05 <= gap <= earlier.retry_in + 5.0, (gap, earlier.retry_in)


def test_dead_letter_after_max_attempts(redis_url: str, start_worker: StartWorker) -> None:
    start_worker("w1")
    handle = submit(tasks.broken, {"id": "b", "value": 0})
    with pytest.raises(TaskFailed) as err:
        handle.result(timeout=30)
    assert err.value.dead_letter_id == handle.id
    letter = DeadLetterStore(app.redis).get(handle.id)
    assert letter.reason == "exhausted"
    assert letter.error_type == "Transient" and "failed again" in letter.error_message
    assert "Transient" in (letter.traceback or "")
    assert [a.outcome for a in letter.attempts] == ["retrying", "retrying", "failed"]
    assert letter.trace_id == handle.trace_id
    assert letter.payload == {"id": "b", "value": 0}
    assert letter.node.startswith("w1@")
    assert app.redis.llen("test:broken:b") == 3


def test_non_retryable_error_goes_straight_to_dead_letters(
    redis_url: str, start_worker: StartWorker
) -> None:
    start_worker("w1")
    handle = submit(tasks.broken, {"id": "p", "value": 1})
    with pytest.raises(TaskFailed):
        handle.result(timeout=30)
    letter = DeadLetterStore(app.redis).get(handle.id)
    assert letter.reason == "non_retryable" and letter.error_type == "Permanent"
    assert len(letter.attempts) == 1
    assert app.redis.llen("test:broken:p") == 1


def test_payload_invalid_in_the_worker_is_dead_lettered(
    redis_url: str, start_worker: StartWorker
) -> None:
    start_worker("w1")
    # A producer that skips vox_flow's submit (plain Celery) can still send a bad payload.
    result = tasks.echo.celery_task.apply_async(args=[{"id": "x", "value": "many"}])
    with pytest.raises(Exception, match="dead-lettered"):
        result.get(timeout=30)
    letter = DeadLetterStore(app.redis).get(result.id)
    assert letter.reason == "invalid_payload"
    assert letter.error_type == "PayloadError" and "value:" in letter.error_message
    assert [a.outcome for a in letter.attempts] == ["invalid"]


def test_dead_letters_past_their_retention_are_pruned(redis_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from vox_flow.contracts.task import DeadLetter, DeadLetterReason

    store = DeadLetterStore(app.redis)
    now = datetime.now(UTC)
    for name, age in (("old", 40), ("recent", 2)):
        store.add(
            DeadLetter(
                id=name, task_id=name, task_name=tasks.echo.name, queue=tasks.echo.queue,
                payload={}, reason=DeadLetterReason.EXHAUSTED, error_type="E",
                error_message="m", node="n", dead_at=now - timedelta(days=age),
            )
        )  # fmt: skip
    assert store.prune(now - timedelta(days=30)) == 1
    assert [letter.id for letter in store.list()] == ["recent"]
