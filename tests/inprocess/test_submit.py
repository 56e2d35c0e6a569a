"""submit / submit_many against a real Redis and a real (in-process) worker."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from pydantic import BaseModel

from tests.helpers import queue_length, recorded_attempts, wait_for
from tests.inprocess.conftest import StartWorker
from tests.integration import tasks
from tests.integration.workers import EventLog
from vox_flow.app import app, create_app
from vox_flow.config import Settings
from vox_flow.errors import PayloadError, SubmitArgumentError, TaskFailed
from vox_flow.keyspace import IDEM_SUBMIT
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


def nothing_sent() -> bool:
    """No message on the test tasks' queues and no idempotency key remembered."""
    queues = (tasks.echo.queue, tasks.add_one.queue, tasks.slow.queue)
    return sum(queue_length(q) for q in queues) == 0 and not app.redis.keys(IDEM_SUBMIT + "*")


_ITEM = {"id": "a", "value": 1}
_SOON = datetime.now(UTC) + timedelta(seconds=5)


@pytest.mark.parametrize(
    ("options", "argument", "reason"),
    [
        # Accepted before: enqueued, then discarded by the worker ("ignored"), PENDING forever.
        ({"eta": "tomorrow"}, "eta", "expected a datetime with a timezone, got str 'tomorrow'"),
        ({"eta": 1700000000}, "eta", "expected a datetime with a timezone"),
        ({"eta": datetime(2030, 1, 1)}, "eta", "a naive datetime is ambiguous"),
        ({"eta": _SOON, "countdown": 5}, "countdown", "give countdown or eta, not both"),
        # Raw library errors before.
        ({"countdown": "soon"}, "countdown", "expected a number of seconds, got str 'soon'"),
        ({"countdown": True}, "countdown", "expected a number of seconds, got bool True"),
        ({"countdown": -1}, "countdown", "must be a finite number >= 0"),
        ({"countdown": float("nan")}, "countdown", "must be a finite number >= 0"),
        ({"countdown": float("inf")}, "countdown", "must be a finite number >= 0"),
        ({"countdown": 1e20}, "countdown", "must be a finite number >= 0 within year 9999"),
        ({"countdown": 10**400}, "countdown", "must be a finite number >= 0"),
        # Not checked before (the docs say 0-9).
        ({"priority": "high"}, "priority", "expected an int from 0 to 9, got str 'high'"),
        ({"priority": -1}, "priority", "must be from 0 to 9, got int -1"),
        ({"priority": 10}, "priority", "must be from 0 to 9, got int 10"),
        ({"priority": True}, "priority", "expected an int from 0 to 9, got bool True"),
        ({"priority": 1.0}, "priority", "expected an int from 0 to 9, got float 1.0"),
        # 123 raised inside redis-py; '' disabled deduplication without a word.
        ({"idempotency_key": 123}, "idempotency_key", "expected a str (or None), got int 123"),
        ({"idempotency_key": ""}, "idempotency_key", "must not be empty"),
        ({"idempotency_key": "k" * 1025}, "idempotency_key", "1025 characters, at most 1024"),
        ({"idempotency_key": "k\ud800"}, "idempotency_key", "lone surrogate U+D800"),
        ({"app": "vox_flow.app"}, "app", "expected a VoxFlow app"),
    ],
)
def test_a_bad_argument_is_named_and_nothing_is_sent(
    redis_url: str, options: dict[str, Any], argument: str, reason: str
) -> None:
    with pytest.raises(SubmitArgumentError) as err:
        submit(tasks.echo, _ITEM, **options)
    assert err.value.argument == argument
    assert err.value.reason.startswith(reason)
    assert str(err.value).startswith(f"invalid submit argument {argument}: ")
    assert str(err.value).endswith("nothing was enqueued")
    assert nothing_sent()


@pytest.mark.parametrize(
    ("task", "options", "argument"),
    [
        (123, {"app": app}, "task"),
        ("", {"app": app}, "task"),
        (tasks.echo.name, {}, "app"),
        (tasks.echo, {"app": create_app(Settings(broker_url="redis://127.0.0.1:1/0"))}, "app"),
    ],
)
def test_the_task_and_the_app_are_checked(
    redis_url: str, task: Any, options: dict[str, Any], argument: str
) -> None:
    with pytest.raises(SubmitArgumentError) as err:
        submit(task, _ITEM, **options)
    assert err.value.argument == argument
    with pytest.raises(SubmitArgumentError) as err:
        submit_many(task, [_ITEM], **options)
    assert err.value.argument == argument
    assert nothing_sent()


@pytest.mark.parametrize(
    ("payloads", "options", "argument", "reason"),
    [
        ([_ITEM, _ITEM], {"idempotency_keys": ["k1", ""]}, "idempotency_keys[1]", "must not be"),
        ([_ITEM, _ITEM], {"idempotency_keys": ["k1", 7]}, "idempotency_keys[1]", "expected a str"),
        ([_ITEM, _ITEM], {"idempotency_keys": ["k1"]}, "idempotency_keys", "1 keys for 2"),
        ([_ITEM, _ITEM], {"idempotency_keys": "ab"}, "idempotency_keys", "expected a list"),
        ([_ITEM, _ITEM], {"idempotency_keys": {"k1", "k2"}}, "idempotency_keys", "expected a"),
        ([_ITEM], {"priority": 10}, "priority", "must be from 0 to 9"),
        (_ITEM, {}, "payloads", "expected an iterable of payloads, got one dict"),
        (tasks.Item(id="a", value=1), {}, "payloads", "expected an iterable of payloads"),
    ],
)
def test_a_bad_batch_argument_is_named_and_no_item_is_sent(
    redis_url: str, payloads: Any, options: dict[str, Any], argument: str, reason: str
) -> None:
    with pytest.raises(SubmitArgumentError) as err:
        submit_many(tasks.echo, payloads, **options)
    assert err.value.argument == argument
    assert err.value.reason.startswith(reason)
    assert nothing_sent()  # not even the first item's key


def test_good_arguments_still_run(redis_url: str, start_worker: StartWorker) -> None:
    start_worker("w1")
    handles = [
        submit(tasks.echo, {"id": "eta", "value": 1}, eta=datetime.now(UTC), priority=9),
        submit(tasks.echo, {"id": "cd", "value": 2}, countdown=Decimal("0.2"), priority=0),
        submit(tasks.echo, {"id": "key", "value": 3}, idempotency_key="k" * 1024),
        *submit_many(tasks.echo, [_ITEM], idempotency_keys=(None,), priority=5),
    ]
    assert [h.result(timeout=30).value for h in handles] == [1, 2, 3, 1]


def test_an_idempotency_key_is_scoped_to_its_task(
    redis_url: str, start_worker: StartWorker
) -> None:
    # Before: add_one's submit returned echo's handle, add_one never ran, and its result()
    # raised a raw ValidationError (echo's output read as add_one's).
    first = submit(tasks.echo, _ITEM, idempotency_key="order-7")
    other = submit(tasks.add_one, _ITEM, idempotency_key="order-7")
    [batch] = submit_many(tasks.add_one, [_ITEM], idempotency_keys=["order-7"])
    assert other.id != first.id and batch.id == other.id
    assert queue_length(tasks.echo.queue) == queue_length(tasks.add_one.queue) == 1
    start_worker("w1")
    assert first.result(timeout=30) == tasks.Echo(id="a", value=1)
    assert other.result(timeout=30) == tasks.Echo(id="a", value=2)  # it ran, once
    assert [a.outcome for a in recorded_attempts(other, 1)] == ["succeeded"]


@pytest.mark.parametrize(
    ("task", "payload", "field", "reason"),
    [
        # Before: sent as the token NaN (not JSON) on the queue.
        (tasks.slow, {"id": "n", "seconds": float("nan")}, "seconds", "NaN is not JSON"),
        (tasks.slow, {"id": "n", "seconds": float("-inf")}, "seconds", "-Infinity is not JSON"),
        # Before: accepted, though no JSON reader but Python's reads it exactly.
        (tasks.echo, {"id": "n", "value": 2**200}, "value", "integer of 201 bits is outside"),
        (tasks.echo, {"id": "\udc00", "value": 1}, "id", "lone surrogate U+DC00"),
    ],
)
def test_a_payload_that_is_not_json_is_refused_by_its_field(
    redis_url: str, task: Any, payload: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(PayloadError) as err:
        submit(task, payload)
    [(got_field, got_reason)] = err.value.errors
    assert got_field == field and got_reason.startswith(reason)
    with pytest.raises(PayloadError) as err:
        submit_many(task, [payload, payload], idempotency_keys=["k1", "k2"])
    assert err.value.index == 0
    assert nothing_sent()


class Ratio(BaseModel):
    num: float
    den: float


class Quotient(BaseModel):
    value: float


@typed_task(app, name="tests.submit.divide")
def divide(job: Ratio) -> Quotient:
    """A task with a bug: 0/0 gives NaN instead of an error."""
    return Quotient(value=job.num / job.den if job.den else float("nan"))


def test_an_output_that_is_not_json_fails_the_run_naming_the_field(
    redis_url: str, start_worker: StartWorker
) -> None:
    # Before: stored as {"value": null}, and result() raised a raw ValidationError.
    start_worker("w1")
    good, bad = submit(divide, {"num": 1, "den": 4}), submit(divide, {"num": 0, "den": 0})
    assert good.result(timeout=30) == Quotient(value=0.25)
    with pytest.raises(TaskFailed, match=r"JsonValueError: output\.value: NaN is not JSON"):
        bad.result(timeout=30)
