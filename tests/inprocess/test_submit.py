"""submit / submit_many against a real Redis and a real (in-process) worker."""

from __future__ import annotations

import json
import time

import pytest
import redis
from celery.result import AsyncResult

from tests.helpers import queue_length, recorded_attempts, wait_for
from tests.inprocess.conftest import StartWorker
from tests.integration import tasks
from tests.integration.workers import EventLog
from vox_flow.app import app, create_app
from vox_flow.config import Settings
from vox_flow.errors import BrokerNotDurable, PayloadError
from vox_flow.results import decode_result
from vox_flow.submit import submit, submit_many
from vox_flow.tasks import typed_task


def test_invalid_payload_names_the_field_and_enqueues_nothing(redis_url: str) -> None:
    with pytest.raises(PayloadError) as err:
        submit(tasks.echo, {"id": "a", "value": -1})
    assert err.value.errors == [("value", "Input should be greater than or equal to 0")]
    assert "value" in str(err.value)
    assert queue_length(tasks.echo.queue) == 0


def test_submit_many_is_all_or_nothing(redis_url: str) -> None:
    payloads = [{"id": str(i), "value": i} for i in range(10)]
    payloads[7] = {"id": "7", "value": "seven"}
    with pytest.raises(PayloadError) as err:
        submit_many(tasks.echo, payloads)
    assert err.value.index == 7
    assert err.value.errors[0][0] == "value"
    assert queue_length(tasks.echo.queue) == 0


def test_submit_many_enqueues_a_batch_atomically(redis_url: str, start_worker: StartWorker) -> None:
    handles = submit_many(tasks.echo, [{"id": str(i), "value": i} for i in range(50)])
    assert queue_length(tasks.echo.queue) == 50
    start_worker("w1")
    assert [h.result(timeout=30).value for h in handles] == list(range(50))
    assert all(h.trace_id and len(h.trace_id) == 32 for h in handles)
    # The batch's trace context reached the worker: its span is in the same trace.
    stored = decode_result(AsyncResult(handles[0].id, app=app).get(timeout=5))
    assert stored is not None and stored["trace_id"] == handles[0].trace_id


def test_submit_many_raises_when_the_broker_refuses(redis_url: str) -> None:
    # Every item of a batch goes to one queue, so a refusal (here: the queue key holds a
    # string) refuses every item alike; submit_many must raise, not report handles.
    app.redis.set(tasks.echo.queue, "not a list")
    with pytest.raises(redis.ResponseError):
        submit_many(tasks.echo, [{"id": "x", "value": 1}])
    app.redis.delete(tasks.echo.queue)


def test_typed_result_and_status(redis_url: str, start_worker: StartWorker) -> None:
    start_worker("w1")
    handle = submit(tasks.echo, tasks.Item(id="a", value=3))
    result = handle.result(timeout=30)
    stored = decode_result(AsyncResult(handle.id, app=app).get(timeout=5))
    assert stored == {"vf": 1, "output": {"id": "a", "value": 3}, "trace_id": handle.trace_id}
    assert isinstance(result, tasks.Echo) and result.value == 3
    assert handle.status == "SUCCESS"
    [attempt] = recorded_attempts(handle, 1)
    assert attempt.outcome == "succeeded" and attempt.number == 1
    assert attempt.node.startswith("w1@")


def test_same_idempotency_key_returns_the_first_handle(redis_url: str) -> None:
    first = submit(tasks.echo, {"id": "a", "value": 1}, idempotency_key="order-1")
    second = submit(tasks.echo, {"id": "a", "value": 1}, idempotency_key="order-1")
    assert second.id == first.id and second.trace_id == first.trace_id
    assert queue_length(tasks.echo.queue) == 1
    batch = submit_many(
        tasks.echo,
        [{"id": "a", "value": 1}, {"id": "b", "value": 2}],
        idempotency_keys=["order-1", "order-2"],
    )
    assert batch[0].id == first.id
    assert queue_length(tasks.echo.queue) == 2


def test_every_enqueued_run_sends_one_task_sent_event(redis_url: str) -> None:
    """Flower and the op-log see a run from its submit, as with ``apply_async`` — and a
    submit deduplicated by its key sends nothing, since nothing was enqueued."""
    sent = EventLog(("task-sent",))
    try:
        one = submit(tasks.echo, {"id": "a", "value": 1}, idempotency_key="k-a")
        again = submit(tasks.echo, {"id": "a", "value": 1}, idempotency_key="k-a")
        batch = submit_many(tasks.echo, [{"id": str(i), "value": i} for i in range(3)])
        keyed = submit_many(
            tasks.echo,
            [{"id": "a", "value": 1}, {"id": "b", "value": 2}],
            idempotency_keys=["k-a", "k-b"],
        )
        assert again.id == one.id and keyed[0].id == one.id
        expected = [one.id, *(h.id for h in batch), keyed[1].id]
        wait_for(lambda: len(sent.events) >= len(expected), 10, "the task-sent events")
        time.sleep(0.2)  # a duplicate event would arrive right behind the others
    finally:
        sent.stop()
    assert sorted(sent.tasks()) == sorted(expected)
    first = next(e for e in sent.events if e["uuid"] == one.id)
    assert first["name"] == tasks.echo.name and first["queue"] == tasks.echo.queue
    assert json.loads(first["args"]) == {"id": "a", "value": 1}


def test_waitaof_on_a_broker_without_it_says_the_message_was_enqueued(redis_url: str) -> None:
    # A separate app on the same server, asking for WAITAOF: the session's server is the
    # system redis-server (7.0 here, no WAITAOF) or Valkey 8 with appendonly (has it).
    durable = create_app(Settings(broker_url=redis_url, durable_submit="waitaof"))
    note = typed_task(durable, name="durable.note")(_note)
    commands = durable.redis.command_list()
    has_waitaof = b"waitaof" in {c if isinstance(c, bytes) else c.encode() for c in commands}
    if has_waitaof:
        handle = submit(note, {"id": "n", "value": 1})
    else:
        with pytest.raises(BrokerNotDurable) as refused:
            submit(note, {"id": "n", "value": 1})
        assert "WAS enqueued" in str(refused.value)
        assert "VOX_FLOW_DURABLE_SUBMIT" in str(refused.value)
    assert int(durable.redis.llen(note.queue)) == 1  # enqueued either way: told, not hidden
    if has_waitaof:
        assert handle.id


def _note(item: tasks.Item) -> tasks.Echo:
    return tasks.Echo(id=item.id, value=item.value)
