"""Dead letters replayed onto a real (in-process) worker: as is, edited, twice, after a crash,
and through the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import audit_entries, dead_letter, recorded_attempts
from tests.inprocess.conftest import StartWorker
from tests.integration import tasks
from tests.integration.workers import run_cli
from vox_flow.app import app
from vox_flow.contracts.task import DeadLetterState
from vox_flow.deadletters.replay import replay
from vox_flow.deadletters.store import DeadLetterStore
from vox_flow.errors import TaskFailed
from vox_flow.keyspace import dlq_entry as entry_key
from vox_flow.submit import TaskHandle, publish, submit


@pytest.fixture
def store(redis_url: str) -> DeadLetterStore:
    return DeadLetterStore(app.redis)


def _dead(handle: TaskHandle[Any]) -> None:
    with pytest.raises(TaskFailed):
        handle.result(timeout=30)


def _runs(item_id: str) -> int:
    return int(app.redis.llen(f"test:broken:{item_id}"))


def test_replay_as_is_runs_once_however_often_replayed(
    store: DeadLetterStore, start_worker: StartWorker
) -> None:
    start_worker("w1")
    handle = submit(tasks.broken, {"id": "r1", "value": 2})
    _dead(handle)
    assert _runs("r1") == 3
    app.redis.set("test:fixed:r1", 1)

    replayed, started = replay(app, handle.id)
    again, started_again = replay(app, handle.id)

    assert started and not started_again
    assert again.id == replayed.id != handle.id
    assert replayed.result(timeout=30).value == 2
    letter = store.get(handle.id)
    assert letter.state == DeadLetterState.REPLAYED
    assert letter.replayed_task_id == replayed.id
    assert _runs("r1") == 4  # three failed attempts, one replayed run


def test_replay_with_an_edited_payload(store: DeadLetterStore, start_worker: StartWorker) -> None:
    start_worker("w1")
    handle = submit(tasks.broken, {"id": "e1", "value": 1})  # non-retryable: dead at once
    _dead(handle)
    app.redis.set("test:fixed:e1", 1)

    replayed, started = replay(app, handle.id, {"id": "e1", "value": 2})

    assert started
    assert replayed.result(timeout=30).value == 2
    assert store.get(handle.id).payload == {"id": "e1", "value": 1}  # the entry is immutable


def test_a_replay_cut_short_by_a_crash_is_finished_by_the_next_one(
    store: DeadLetterStore, start_worker: StartWorker
) -> None:
    """Crash after the state change, before the publish: the next replay publishes the same
    run. Crash after the publish, before 'replayed': the next replay publishes it again, and
    the run's idempotency key makes the second delivery a no-op."""
    before_publish = dead_letter({"id": "c1", "value": 2}, task=tasks.broken)
    after_publish = dead_letter({"id": "c2", "value": 2}, task=tasks.broken)
    for letter in (before_publish, after_publish):
        store.add(letter)
        app.redis.set(f"test:fixed:{letter.payload['id']}", 1)
        # The replay's first step, exactly as replay() runs it; then the process "dies".
        store._begin_replay(
            keys=[entry_key(letter.id)],
            args=[f"replay-{letter.id}", json.dumps(letter.payload), datetime.now(UTC).isoformat()],
        )
        assert store.get(letter.id).state == DeadLetterState.REPLAYING
    assert app.redis.llen(tasks.broken.queue) == 0  # nothing was published
    # The second one died just after its publish.
    publish(
        tasks.broken,
        tasks.broken.validate(after_publish.payload),
        task_id=f"replay-{after_publish.id}",
        effect_key=f"dlq:{after_publish.id}",
    )
    start_worker("w1")

    for letter in (before_publish, after_publish):
        handle, started = replay(app, letter.id)
        assert not started and handle.id == f"replay-{letter.id}"
        assert handle.result(timeout=30).value == 2
        assert store.get(letter.id).state == DeadLetterState.REPLAYED

    # c2 was delivered twice; wait for the second delivery, which must skip the effect.
    second = TaskHandle(app, f"replay-{after_publish.id}", tasks.Echo)
    attempts = recorded_attempts(second, 2, within=30)
    # The two deliveries of one task id record their attempts in either order.
    assert sorted(a.outcome.value for a in attempts) == ["skipped", "succeeded"]
    assert _runs("c1") == 1 and _runs("c2") == 1


def test_cli_replay_twice_runs_once_and_records_once(
    store: DeadLetterStore, redis_url: str, data_dir: Path, start_worker: StartWorker
) -> None:
    letter = dead_letter({"id": "x1", "value": 2}, task=tasks.broken)
    store.add(letter)
    app.redis.set("test:fixed:x1", 1)
    start_worker("w1")

    replay_cli = ("dlq", "replay", letter.id, "--json")
    first = run_cli(redis_url, data_dir, *replay_cli, "--reason", "fixed x1")
    second = run_cli(redis_url, data_dir, *replay_cli)

    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)["data"]
    assert one["started"] is True
    # The second is refused before its audit entry, naming the first replay's task.
    assert second.returncode == 2, second.stderr
    error = json.loads(second.stdout)["error"]
    assert error["code"] == "already_replayed" and one["task_id"] in error["message"]
    assert TaskHandle(app, one["task_id"], tasks.Echo).result(timeout=30).value == 2
    assert _runs("x1") == 1
    actions = [(e.action, e.target) for e in audit_entries(data_dir)]
    assert actions == [("deadletter.replay", letter.id)]
