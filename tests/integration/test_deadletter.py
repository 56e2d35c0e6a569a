"""Dead letters: replay (as is, edited, refused, twice, after a crash), purge, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration import tasks
from tests.integration.conftest import StartWorker
from tests.integration.workers import ROOT, worker_env
from vox_flow.app import app
from vox_flow.audit.log import AuditLog
from vox_flow.config import Settings
from vox_flow.contracts.task import Attempt, DeadLetter, DeadLetterState
from vox_flow.deadletters.replay import replay
from vox_flow.deadletters.store import DeadLetterStore
from vox_flow.errors import PayloadError, TaskFailed
from vox_flow.keyspace import dlq_entry as entry_key
from vox_flow.store import open_store
from vox_flow.submit import TaskHandle, publish, submit


@pytest.fixture
def store(redis_url: str) -> DeadLetterStore:
    return DeadLetterStore(app.redis)


def _letter(
    payload: dict[str, Any], *, task: Any = tasks.broken, minutes_ago: float = 0
) -> DeadLetter:
    """A dead letter as a worker writes it, without running a worker."""
    letter_id = str(uuid.uuid4())
    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return DeadLetter(
        id=letter_id,
        task_id=letter_id,
        task_name=task.name,
        queue=task.queue,
        payload=payload,
        reason="exhausted",
        error_type="Transient",
        error_message=f"{payload.get('id')} failed again",
        traceback="Traceback (most recent call last):\n  ...\nTransient: failed again\n",
        attempts=[
            Attempt(
                number=1,
                node="w1@test",
                started_at=when,
                outcome="failed",
                error_type="Transient",
                error_message="failed again",
            ),
        ],
        node="w1@test",
        dead_at=when,
    )


def _dead(handle: TaskHandle[Any]) -> None:
    with pytest.raises(TaskFailed):
        handle.result(timeout=30)


def _runs(item_id: str) -> int:
    return int(app.redis.llen(f"test:broken:{item_id}"))


def _cli(redis_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``vox-flow dlq ...`` as an operator runs it (stdin is not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "vox_flow.cli", "dlq", *args],
        env=worker_env(redis_url, data_dir),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def _audit_actions(data_dir: Path) -> list[tuple[str, str]]:
    store = open_store(Settings(data_dir=data_dir))
    try:
        return [(e.action, e.target) for e in AuditLog(store).entries()]
    finally:
        store.dispose()


# --- replay through the Python API ----------------------------------------------------------


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


def test_an_invalid_edit_is_refused_and_changes_nothing(
    store: DeadLetterStore, redis_url: str, data_dir: Path, tmp_path: Path
) -> None:
    letter = _letter({"id": "i1", "value": 2})
    store.add(letter)
    before = app.redis.hgetall(entry_key(letter.id))

    with pytest.raises(PayloadError) as err:
        replay(app, letter.id, {"id": "i1", "value": -5})
    assert [field for field, _ in err.value.errors] == ["value"]

    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"id": "i1", "value": "lots"}))
    result = _cli(redis_url, data_dir, "replay", letter.id, "--payload", str(edit), "--json")
    assert result.returncode == 2, result.stderr
    error = _json(result)["error"]
    assert [f["field"] for f in error["fields"]] == ["value"]
    assert "value" in result.stderr and "nothing changed" in result.stderr

    assert app.redis.hgetall(entry_key(letter.id)) == before
    assert store.get(letter.id).state == DeadLetterState.DEAD
    assert app.redis.llen(tasks.broken.queue) == 0
    assert _audit_actions(data_dir) == []  # refused before anything was recorded


def test_a_replay_cut_short_by_a_crash_is_finished_by_the_next_one(
    store: DeadLetterStore, start_worker: StartWorker
) -> None:
    """Crash after the state change, before the publish: the next replay publishes the same
    run. Crash after the publish, before 'replayed': the next replay publishes it again, and
    the run's idempotency key makes the second delivery a no-op."""
    before_publish = _letter({"id": "c1", "value": 2})
    after_publish = _letter({"id": "c2", "value": 2})
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
    deadline = time.monotonic() + 30
    second = TaskHandle(app, f"replay-{after_publish.id}", tasks.Echo)
    while len(second.attempts()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    # The two deliveries of one task id record their attempts in either order.
    assert sorted(a.outcome.value for a in second.attempts()) == ["skipped", "succeeded"]
    assert _runs("c1") == 1 and _runs("c2") == 1


# --- purge -----------------------------------------------------------------------------------


def test_purge_one_and_all_needs_confirmation_and_is_audited(
    store: DeadLetterStore, redis_url: str, data_dir: Path
) -> None:
    letters = [_letter({"id": f"p{i}", "value": 0}) for i in range(3)]
    for letter in letters:
        store.add(letter)

    refused = _cli(redis_url, data_dir, "purge", letters[0].id)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    refused_all = _cli(redis_url, data_dir, "purge", "--all")
    assert refused_all.returncode == 2 and store.count() == 3

    one = _cli(redis_url, data_dir, "purge", letters[0].id, "--yes", "--json", "--reason", "t")
    assert one.returncode == 0, one.stderr
    assert _json(one)["data"]["purged"] == [letters[0].id]
    assert store.count() == 2

    unknown = _cli(redis_url, data_dir, "purge", letters[0].id, "--yes")
    assert unknown.returncode == 1 and "no dead letter" in unknown.stderr

    every = _cli(redis_url, data_dir, "purge", "--all", "--yes", "--json")
    assert every.returncode == 0, every.stderr
    assert sorted(_json(every)["data"]["purged"]) == sorted(x.id for x in letters[1:])
    assert store.count() == 0 and not app.redis.exists(entry_key(letters[1].id))

    assert _audit_actions(data_dir) == [
        ("deadletter.purge", letters[0].id),
        ("deadletter.purge", "all"),
    ]


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_list_and_show(store: DeadLetterStore, redis_url: str, data_dir: Path) -> None:
    old = _letter({"id": "l1", "value": 0}, minutes_ago=10)
    new = _letter({"id": "l2", "value": 0}, minutes_ago=1)
    other = _letter({"id": "l3", "value": 0}, task=tasks.echo, minutes_ago=5)
    for letter in (old, new, other):
        store.add(letter)

    listed = _cli(redis_url, data_dir, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = _json(listed)["data"]
    assert [r["id"] for r in rows] == [new.id, other.id, old.id]  # newest first
    assert rows[0]["task"] == tasks.broken.name and rows[0]["state"] == "dead"
    assert rows[0]["reason"] == "exhausted" and rows[0]["error_type"] == "Transient"

    only = _json(_cli(redis_url, data_dir, "list", "--task", tasks.broken.name, "--limit", "1",
                      "--json"))["data"]  # fmt: skip
    assert [r["id"] for r in only] == [new.id]

    shown = _cli(redis_url, data_dir, "show", old.id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert DeadLetter.model_validate(_json(shown)["data"]) == old

    text = _cli(redis_url, data_dir, "show", old.id)
    assert "Transient: failed again" in text.stdout and "#1 failed" in text.stdout

    missing = _cli(redis_url, data_dir, "show", "no-such-id", "--json")
    assert missing.returncode == 1 and "no dead letter with id 'no-such-id'" in missing.stderr
    assert _json(missing)["error"]["code"] == 1


def test_cli_replay_twice_runs_once(
    store: DeadLetterStore, redis_url: str, data_dir: Path, start_worker: StartWorker
) -> None:
    letter = _letter({"id": "x1", "value": 2})
    store.add(letter)
    app.redis.set("test:fixed:x1", 1)
    start_worker("w1")

    first = _cli(redis_url, data_dir, "replay", letter.id, "--json", "--reason", "fixed x1")
    second = _cli(redis_url, data_dir, "replay", letter.id, "--json")

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    one, two = _json(first)["data"], _json(second)["data"]
    assert one["started"] is True and two["started"] is False
    assert one["task_id"] == two["task_id"]
    assert TaskHandle(app, one["task_id"], tasks.Echo).result(timeout=30).value == 2
    assert _runs("x1") == 1
    assert _audit_actions(data_dir) == [("deadletter.replay", letter.id)] * 2
