"""How a typed task runs in a worker: validate, claim its key, run, retry or dead-letter.

Attempts are numbered by the ``vf_attempt`` message header, which vox_flow raises on every
retry and on every run lost to a dead worker (settle.py), so the count survives redelivery.
"""

from __future__ import annotations

import traceback
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Retry
from pydantic import ValidationError

from vox_flow._celery.request import LostRun, LostRunRequest
from vox_flow.contracts.task import (
    HEADER_ATTEMPT,
    HEADER_KEY,
    Attempt,
    AttemptOutcome,
    DeadLetterReason,
)
from vox_flow.deadletters.store import build_letter
from vox_flow.errors import DeadLettered, PayloadError
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


def execute(typed: TypedTask[Any, Any], task: VoxTask, payload: Any) -> str:
    """Run one attempt of ``typed`` for the current Celery request."""
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

    token = ""
    if key is not None:
        token = f"{request.id}:{number}:{uuid.uuid4().hex[:8]}"
        claim = runtime.idempotency.claim(key, token, typed.app.settings.lease_seconds)
        if claim.state == "done":
            attempt(AttemptOutcome.SKIPPED)
            return claim.value
        if claim.state == "busy":
            # Another delivery of this key is running; look again once its lease could lapse.
            raise task.retry(countdown=typed.app.settings.lease_seconds / 2, headers=headers)

    with runtime.running(key, token):
        try:
            output = typed.fn(model)
            if not isinstance(output, typed.output_model):
                output = typed.output_model.model_validate(output)
        except Retry:
            raise
        except Exception as exc:
            if key is not None:
                runtime.idempotency.release(key, token)
            delay = typed.retry.next_delay(exc, number)
            if delay is not None:
                attempt(AttemptOutcome.RETRYING, exc, retry_in=delay)
                raise task.retry(
                    exc=exc,
                    countdown=delay,
                    headers={**headers, HEADER_ATTEMPT: number + 1},  # type: ignore[dict-item]
                ) from exc
            reason = (
                DeadLetterReason.EXHAUSTED
                if typed.retry.retryable(exc)
                else DeadLetterReason.NON_RETRYABLE
            )
            dead_letter(reason, exc, AttemptOutcome.FAILED)

    result = encode_result(output, trace_id)
    attempt(AttemptOutcome.SUCCEEDED, soon=True)
    if key is not None:
        runtime.idempotency.complete(key, token, result)
    return result
