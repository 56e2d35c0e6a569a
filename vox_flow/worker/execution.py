"""How a typed task runs in a worker: validate, claim its key, run, retry or dead-letter.

Attempts are numbered by the ``vf_attempt`` message header, which vox_flow raises on every
retry and on every run lost to a dead worker (settle.py), so the count survives redelivery.

A keyed run's completion is stored while its claim is still renewed; a broker outage meets
retries with backoff until the claim could have lapsed. Past that, the attempt is recorded
``unconfirmed`` and the message goes back to its queue (Celery's ``Reject(requeue=True)``):
the effect may then run again, as with a worker that died just after it.
"""

from __future__ import annotations

import traceback
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from celery import Task
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from vox_flow._celery.backend import for_typed_tasks
from vox_flow._celery.request import LostRun, LostRunRequest
from vox_flow.contracts.task import (
    HEADER_ATTEMPT,
    HEADER_KEY,
    Attempt,
    AttemptOutcome,
    DeadLetterReason,
    shown_args,
)
from vox_flow.deadletters.store import build_letter
from vox_flow.errors import DeadLettered, PayloadError
from vox_flow.idempotency import CompletionNotStored
from vox_flow.keyspace import scoped_key
from vox_flow.results import encode_result, unwrap
from vox_flow.telemetry import current_trace_id
from vox_flow.worker.runtime import WorkerRuntime
from vox_flow.worker.settle import settle

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow
    from vox_flow.tasks import TypedTask


class VoxTask(Task):  # type: ignore[type-arg]
    """Base of every typed task's Celery task."""

    Request = LostRunRequest  # type: ignore[assignment]  # Celery accepts the class itself
    typing = False  # the payload is checked by pydantic, not by Celery's signature check

    @property
    def backend(self) -> Any:
        """Where this task's states and results are stored: with a Redis result backend, one
        that writes a run's buffered attempt records with its result (_celery/backend.py)."""
        if self._backend is not None:  # set explicitly, as Celery allows
            return self._backend
        app: VoxFlow = self.app  # type: ignore[assignment]  # always a VoxFlow here
        return app.typed_backend(_build_backend)

    @backend.setter
    def backend(self, value: Any) -> None:
        self._backend = value

    def run_lost(self, lost: LostRun) -> bool:
        """Settle a run Celery saw die: requeued with its attempt counted, or dead-lettered."""
        app: VoxFlow = self.app  # type: ignore[assignment]  # always a VoxFlow here
        if lost.task_name not in app.typed:
            return False
        settle(
            app,
            lost.delivery_tag,
            lost=True,
            error_type=lost.error_type,
            error_message=lost.error_message,
            node=lost.hostname or app.settings.node_id,
            started_at=lost.started_at,
        )
        return True


def _build_backend(app: VoxFlow) -> Any:
    # The runtime is looked up at each write: a forked child gets a fresh one.
    return for_typed_tasks(app, lambda: WorkerRuntime.of(app).attempts)


# What a broker outage raises in vox_flow's own writes around a run (claims, attempt records,
# dead letters, a retry's publish through kombu).
_BROKER_ERRORS = (redis.ConnectionError, redis.TimeoutError, OperationalError)


def execute(typed: TypedTask[Any, Any], task: VoxTask, payload: Any) -> str:
    """Run one attempt of ``typed`` for the current Celery request.

    A broker error in vox_flow's own bookkeeping (not in the task's function, whose errors
    go to its retry policy) gives the message back to its queue, to run again once the broker
    is back: it is never acknowledged as failed. Celery turns a retry whose publish failed into
    a rejection that drops the message; that is turned into one that requeues it.
    """
    try:
        return _execute(typed, task, payload)
    except Reject as exc:
        reason, requeue = exc.args[0], exc.args[1]  # Celery's stubs omit the attributes
        if not requeue and isinstance(reason, _BROKER_ERRORS):
            raise Reject(reason, requeue=True) from exc
        raise
    except _BROKER_ERRORS as exc:
        raise Reject(exc, requeue=True) from exc


def _execute(typed: TypedTask[Any, Any], task: VoxTask, payload: Any) -> str:
    runtime = WorkerRuntime.of(typed.app)
    runtime.start()  # its keeper writes the buffered attempt records (record_soon)
    request = task.request
    task_id: str = request.id or ""
    headers: dict[str, Any] = dict(request.headers or {})
    number = int(headers.get(HEADER_ATTEMPT, 1))
    key: str | None = headers.get(HEADER_KEY)
    node = request.hostname or typed.app.settings.node_id
    started = datetime.now(UTC)
    trace_id = current_trace_id()
    payload = unwrap(payload)
    if isinstance(payload, list) and typed.fan_in_field is not None:
        payload = {typed.fan_in_field: payload}  # a fan-in step gets its group's outputs

    def attempt(
        outcome: AttemptOutcome, exc: BaseException | None = None, soon: bool = False, **extra: Any
    ) -> Attempt:
        # Built from values this function made itself: no need to validate them again.
        record = Attempt.model_construct(
            number=number,
            node=node,
            started_at=started,
            ended_at=datetime.now(UTC),
            outcome=outcome,
            error_type=type(exc).__name__ if exc else None,
            error_message=str(exc) if exc else None,
            retry_in=extra.get("retry_in"),
        )
        if soon:
            runtime.attempts.record_soon(task_id, record)
        else:
            runtime.attempts.record(task_id, record)
        return record

    def dead_letter(reason: DeadLetterReason, exc: BaseException, outcome: AttemptOutcome) -> None:
        attempt(outcome, exc)
        letter = build_letter(
            task_id=task_id,
            task_name=typed.name,
            queue=typed.queue,
            payload=payload,
            reason=reason,
            error_type=type(exc).__name__,
            error_message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
            attempts=runtime.attempts.list(task_id),
            node=node,
            trace_id=trace_id,
            idempotency_key=key,
        )
        runtime.dead_letters.add(letter)
        raise DeadLettered(letter.id, letter.error_type, letter.error_message) from exc

    try:
        model = typed.input_model.model_validate(payload)
    except ValidationError as exc:
        error = PayloadError.from_validation(typed.name, exc)
        dead_letter(DeadLetterReason.INVALID_PAYLOAD, error, AttemptOutcome.INVALID)

    def shown() -> dict[str, Any]:
        # What Flower shows as args on a retry: the payload's JSON, as submit sends it (Celery's
        # default would be a Python repr). Built only when a retry is sent. A dict: Celery's
        # stubs leave ``argsrepr`` out.
        return {"argsrepr": shown_args(model.model_dump(mode="json"))}

    token = ""
    scoped = scoped_key(typed.name, key) if key is not None else None
    lease = typed.app.settings.lease_seconds
    if scoped is not None:
        token = f"{request.id}:{number}:{uuid.uuid4().hex[:8]}"
        claim = runtime.idempotency.claim(scoped, token, lease)
        if claim.state == "done":
            attempt(AttemptOutcome.SKIPPED)
            return claim.value
        if claim.state == "busy":
            # Another delivery of this key is running; look again once its lease could lapse.
            raise task.retry(countdown=lease / 2, headers=headers, **shown())

    # The claim is renewed until the completion is stored, however long the broker is away.
    with runtime.running(scoped, token):
        try:
            output = typed.fn(model)
            if not isinstance(output, typed.output_model):
                output = typed.output_model.model_validate(output)
        except Retry:
            raise
        except Exception as exc:
            if scoped is not None:
                runtime.idempotency.release(scoped, token)
            delay = typed.retry.next_delay(exc, number)
            if delay is not None:
                attempt(AttemptOutcome.RETRYING, exc, retry_in=delay)
                raise task.retry(
                    exc=exc,
                    countdown=delay,
                    headers={**headers, HEADER_ATTEMPT: number + 1},  # type: ignore[dict-item]
                    **shown(),
                ) from exc
            reason = (
                DeadLetterReason.EXHAUSTED
                if typed.retry.retryable(exc)
                else DeadLetterReason.NON_RETRYABLE
            )
            dead_letter(reason, exc, AttemptOutcome.FAILED)

        result = encode_result(output, trace_id)
        if scoped is not None:
            try:
                runtime.idempotency.complete_while_held(scoped, token, result, lease)
            except CompletionNotStored as exc:
                # Buffered: the broker is away; the keeper writes it once it is back.
                attempt(AttemptOutcome.UNCONFIRMED, exc, soon=True)
                raise Reject(exc, requeue=True) from exc
    attempt(AttemptOutcome.SUCCEEDED, soon=True)
    return result
