"""The typed-task executor in a real (in-process) worker: idempotency keys scoped to their
task, and retries shown in Flower as their first message is."""

from __future__ import annotations

import uuid

from tests.helpers import wait_for
from tests.inprocess.conftest import StartWorker
from tests.integration import tasks
from tests.integration.workers import EventLog
from vox_flow.app import app
from vox_flow.keyspace import idem_done
from vox_flow.submit import publish


def test_one_key_given_to_two_tasks_runs_both_effects(
    redis_url: str, start_worker: StartWorker
) -> None:
    """The worker side of the scope (``publish`` skips submit's own dedup): the effect of
    ``echo`` under a key does not stand for ``add_one``'s under the same key."""
    start_worker("w1")
    key = "order-17"
    first = publish(
        tasks.echo, tasks.Item(id="e", value=1), task_id=str(uuid.uuid4()), effect_key=key
    )
    assert first.result(timeout=30).value == 1
    second = publish(
        tasks.add_one, tasks.Echo(id="a", value=1), task_id=str(uuid.uuid4()), effect_key=key
    )
    assert second.result(timeout=30).value == 2  # run, not echo's stored result
    assert [a.outcome for a in second.attempts()] == ["succeeded"]
    assert app.redis.exists(idem_done(tasks.echo.name, key), idem_done(tasks.add_one.name, key))
    # Each task's own repeat is still skipped.
    again = publish(
        tasks.add_one, tasks.Echo(id="a", value=5), task_id=str(uuid.uuid4()), effect_key=key
    )
    assert again.result(timeout=30).value == 2
    assert [a.outcome for a in again.attempts()] == ["skipped"]


def test_a_retry_shows_the_payload_as_json_as_the_first_message_does(
    redis_url: str, start_worker: StartWorker
) -> None:
    received = EventLog(("task-received",))
    try:
        start_worker("w1")
        handle = publish(tasks.flaky, tasks.Item(id="f", value=1), task_id=str(uuid.uuid4()))
        assert handle.result(timeout=30).value == 2  # failed once, then succeeded
        shown = wait_for(
            lambda: (
                len(s := [e["args"] for e in received.events if e["uuid"] == handle.id]) >= 2 and s
            ),
            10,
            "both deliveries' task-received events",
        )
    finally:
        received.stop()
    assert shown == ['{"id":"f","value":1}'] * 2


def test_a_broker_error_in_the_claim_gives_the_message_back_instead_of_failing_it(
    redis_url: str, start_worker: StartWorker
) -> None:
    """The claim before a run meets a broker blip (one ConnectionError): the message goes
    back to its queue and runs once the broker answers; it is not acknowledged as FAILURE."""
    from unittest import mock

    import redis

    from vox_flow.idempotency import IdempotencyStore

    real = IdempotencyStore.claim
    calls: list[str] = []

    def blip_once(self: IdempotencyStore, *args: object, **kwargs: object) -> object:
        calls.append("claim")
        if len(calls) == 1:
            raise redis.ConnectionError("Connection refused (simulated blip)")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    with mock.patch.object(IdempotencyStore, "claim", blip_once):
        start_worker("w1")
        handle = publish(
            tasks.add_one, tasks.Echo(id="b", value=1), task_id=str(uuid.uuid4()), effect_key="k"
        )
        assert handle.result(timeout=30).value == 2
    assert len(calls) == 2
    assert [a.outcome for a in handle.attempts()] == ["succeeded"]
