"""Runs lost to dead workers: poison tasks, SIGKILL mid-run, redelivery and idempotency."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration import tasks
from tests.integration.conftest import StartWorker
from tests.integration.workers import EventLog, celery_worker_args, vox_flow_worker_args
from vox_flow._celery.layout import layout
from vox_flow.app import app
from vox_flow.contracts.task import HEADER_TAKEBACKS
from vox_flow.deadletters.store import DeadLetterStore
from vox_flow.errors import TaskFailed
from vox_flow.keyspace import idem_claim
from vox_flow.submit import publish, submit, submit_many
from vox_flow.worker.lease import LeaseKeeper
from vox_flow.worker.settle import settle


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


LAYOUTS = ["celery-prefork", "vox-flow-worker"]


def start_layout(start_worker: StartWorker, layout: str, processes: int) -> None:
    """One worker of the given layout: plain `celery worker` (prefork) or `vox-flow worker`."""
    if layout == "celery-prefork":
        start_worker("w1", pool="prefork", concurrency=processes)
    else:
        start_worker("w1", args=vox_flow_worker_args(processes=processes))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_poison_task_ends_in_dead_letters_while_others_flow(
    redis_url: str, start_worker: StartWorker, layout: str
) -> None:
    start_layout(start_worker, layout, processes=1 if layout == "celery-prefork" else 2)
    failed = EventLog(("task-failed",))
    bad = submit(tasks.poison, {"id": "p", "value": 0})
    good = submit_many(tasks.echo, [{"id": str(i), "value": i} for i in range(20)])
    assert [h.result(timeout=60).value for h in good] == list(range(20))
    with pytest.raises(TaskFailed) as err:
        bad.result(timeout=60)
    assert err.value.dead_letter_id == bad.id
    letter = DeadLetterStore(app.redis).get(bad.id)
    assert letter.reason == "lost" and letter.error_type == "WorkerLostError", letter
    assert letter.trace_id == bad.trace_id is not None
    assert [a.outcome for a in letter.attempts] == ["lost", "lost"]
    assert app.redis.llen("test:poison:p") == tasks.poison.retry.max_attempts
    # No process of the task is left to report it: the one that settled it sends task-failed,
    # which is how Flower and the op-log learn it was dead-lettered.
    wait_for(lambda: bad.id in failed.tasks(), 10, "the task-failed event of the poison task")
    assert failed.events[failed.tasks().index(bad.id)]["exception"].startswith("DeadLettered(")
    failed.stop()
    # Nothing stays reserved (results are stored just before the ack, so allow for that).
    wait_for(lambda: app.redis.hlen("unacked") == 0, 5, "every message to be acknowledged")


def test_sigkilled_worker_task_completes_on_another_within_60s(
    redis_url: str, start_worker: StartWorker
) -> None:
    # Default lease settings: this measures the guarantee as shipped.
    first = start_worker("w1")
    handle = submit(tasks.slow, {"id": "s", "seconds": 3})
    wait_for(lambda: app.redis.llen("test:slow-start:s") == 1, 30, "the run to start on w1")
    first.kill()
    killed_at = time.monotonic()
    start_worker("w2")
    assert handle.result(timeout=60).value == 3
    recovered_in = time.monotonic() - killed_at
    assert recovered_in < 60, recovered_in
    assert app.redis.llen("test:slow-start:s") == 2  # ran again after the kill
    assert app.redis.llen("test:slow-done:s") == 1


def test_task_that_takes_its_whole_worker_down_ends_in_dead_letters(
    redis_url: str, start_worker: StartWorker
) -> None:
    """No process is left to see the run die, so no attempt is counted: the message comes
    back only through its lapsed lease, and its take-backs are what bound it."""
    fast = {"lease_seconds": "2", "lease_renew_seconds": "0.5",
            "reaper_interval_seconds": "0.5", "lease_takeback_limit": "2"}  # fmt: skip
    # A worker of another queue, left alive to take the messages back.
    start_worker("keeper", args=[*celery_worker_args("keeper"), "-Q", tasks.echo.queue], **fast)
    handle = submit(tasks.poison, {"id": "host", "value": 0})
    for run in (1, 2):
        # Solo pool: the task runs in the worker's only process, which it kills.
        name = f"victim{run}"
        victim = start_worker(
            name, args=[*celery_worker_args(name), "-Q", tasks.poison.queue], **fast
        )
        process = victim.process
        assert process is not None
        wait_for(lambda p=process: p.poll() is not None, 30, f"the poison task to take {name} down")
        assert app.redis.llen("test:poison:host") == run
    with pytest.raises(TaskFailed) as err:
        handle.result(timeout=30)
    assert err.value.dead_letter_id == handle.id
    letter = DeadLetterStore(app.redis).get(handle.id)
    assert letter.reason == "lost" and letter.error_type == "LeaseExpired", letter
    assert "taken back 2 times" in letter.error_message
    assert letter.trace_id == handle.trace_id
    assert letter.payload == {"id": "host", "value": 0}
    assert app.redis.hlen("unacked") == 0 and app.redis.llen(tasks.poison.queue) == 0


def _reserve(queue: str) -> str:
    """Move the next message of ``queue`` into kombu's reserved set, as a worker would."""
    raw = app.redis.rpop(queue)
    assert raw is not None
    message = json.loads(raw)
    tag = message["properties"]["delivery_tag"]
    app.redis.hset(layout(app).unacked, tag, json.dumps([message, "", queue]))
    app.redis.zadd(layout(app).unacked_index, {tag: time.time()})
    return str(tag)


def test_only_a_lapsed_lease_counts_a_take_back(redis_url: str) -> None:
    """A message a dead child merely held goes back as it was; one whose worker stopped
    renewing counts a take-back, and the count travels with the message."""
    queue = tasks.echo.queue
    submit(tasks.echo, {"id": "held", "value": 0})
    assert settle(app, _reserve(queue), lost=False, count_takeback=False) == "requeued"
    assert HEADER_TAKEBACKS not in json.loads(app.redis.lindex(queue, 0))["headers"]
    assert settle(app, _reserve(queue), lost=False) == "requeued"
    assert settle(app, _reserve(queue), lost=False) == "requeued"
    assert json.loads(app.redis.lindex(queue, 0))["headers"][HEADER_TAKEBACKS] == 2
    assert app.redis.hlen(layout(app).unacked) == 0


def test_effect_runs_once_per_key_when_delivered_twice(
    redis_url: str, start_worker: StartWorker
) -> None:
    # A short lease: a delivery that finds the key busy looks again after lease / 2.
    lease = {"lease_seconds": "4", "lease_renew_seconds": "1"}
    start_worker("w1", **lease)
    start_worker("w2", **lease)
    payload = tasks.Item(id="e", value=1500)  # each run takes 1.5 s
    # The same run delivered twice (as a redelivery does), the second while the first runs.
    first = publish(tasks.effect, payload, task_id="twice", effect_key="charge-e")
    wait_for(
        lambda: app.redis.exists(idem_claim(tasks.effect.name, "charge-e")),
        30,
        "the first run's claim",
    )
    publish(tasks.effect, payload, task_id="twice", effect_key="charge-e")
    assert first.result(timeout=60).value == 1

    def finished() -> list[str]:
        return sorted(a.outcome for a in first.attempts() if a.outcome != "retrying")

    # The second finds the key busy and looks again later, or (if it came late) finds the
    # stored result at once: either way it skips the effect.
    wait_for(lambda: len(finished()) == 2, 60, "both deliveries to finish")
    assert app.redis.get("test:effect:e") == b"1"
    assert finished() == ["skipped", "succeeded"], finished()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hard_time_limit_kills_the_run_and_dead_letters_it(
    redis_url: str, start_worker: StartWorker, layout: str
) -> None:
    start_layout(start_worker, layout, processes=1)
    handle = submit(tasks.stuck, {"id": "t", "seconds": 30})
    with pytest.raises(TaskFailed):
        handle.result(timeout=60)
    letter = DeadLetterStore(app.redis).get(handle.id)
    assert letter.reason == "lost" and letter.error_type == "TimeLimitExceeded", letter
    assert letter.trace_id == handle.trace_id is not None
    assert [a.outcome for a in letter.attempts] == ["lost", "lost"]
    for attempt in letter.attempts:  # each run killed at its 1 s limit, not let sleep 30 s
        assert attempt.ended_at is not None
        lasted = (attempt.ended_at - attempt.started_at).total_seconds()
        assert 1.0 <= lasted < 5.0, (lasted, attempt)
    assert app.redis.llen("test:stuck:t") == 2
    # The worker is still serving after its runs were killed.
    assert submit(tasks.echo, {"id": "after", "value": 5}).result(timeout=30).value == 5


def test_a_message_that_cannot_be_taken_back_does_not_stop_the_others(redis_url: str) -> None:
    """The reaper takes the oldest lapsed messages first: one it cannot settle (sent
    through a named exchange) is left to kombu, and the ones after it still come back."""
    where = layout(app)
    stuck = {"headers": {"id": "x"}, "properties": {"delivery_tag": "stuck"}, "body": ""}
    app.redis.hset(where.unacked, "stuck", json.dumps([stuck, "some.exchange", "q"]))
    app.redis.zadd(where.unacked_index, {"stuck": time.time() - 3600})  # the oldest
    submit(tasks.echo, {"id": "lapsed", "value": 0})
    tag = _reserve(tasks.echo.queue)
    app.redis.zadd(where.unacked_index, {tag: time.time() - 1800})
    assert LeaseKeeper(app, list).reap() == 1
    assert app.redis.llen(tasks.echo.queue) == 1  # the lapsed one is back on its queue
    assert app.redis.hexists(where.unacked, "stuck")  # the other is kombu's to redeliver
