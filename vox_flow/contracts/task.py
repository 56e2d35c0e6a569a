"""Wire types of tasks: attempts, dead letters, message headers."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# vox_flow's own message headers (Celery carries custom headers through retries).
HEADER_KEY = "vf_key"  # the idempotency key of the effect
HEADER_ATTEMPT = "vf_attempt"  # the number of the attempt this message starts (1-based)
HEADER_TAKEBACKS = "vf_takebacks"  # times taken back from a worker that stopped renewing

# What Flower shows as a typed task's args (``argsrepr``): see shown_args.
ARGSREPR_MAX = 1024  # characters, Celery's own limit


def shown_args(payload: Any) -> str:
    """A typed task's ``argsrepr``: its payload's compact JSON (the JSON value sent), cut to
    ``ARGSREPR_MAX`` characters; the same on the first message and on every retry."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))[:ARGSREPR_MAX]


class AttemptOutcome(StrEnum):
    """How one attempt of a task ended."""

    SUCCEEDED = "succeeded"
    RETRYING = "retrying"  # failed with a retryable error; another attempt is scheduled
    FAILED = "failed"  # failed for good (non-retryable, or attempts exhausted)
    INVALID = "invalid"  # the payload failed validation in the worker
    LOST = "lost"  # the worker process died (crash, SIGKILL, hard time limit)
    SKIPPED = "skipped"  # the idempotency key's effect had already run
    # The function returned, but its idempotency key's completion could not be stored before
    # the key's claim could lapse (the broker was unreachable): the message goes back to its
    # queue, and the effect may run again. Not a success: nothing recorded that it happened.
    UNCONFIRMED = "unconfirmed"


class Attempt(BaseModel):
    """One run of a task on one node."""

    model_config = ConfigDict(frozen=True)

    number: int = Field(ge=1, description="1 for the first run, counting every run.")
    node: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: AttemptOutcome
    error_type: str | None = None
    error_message: str | None = None
    retry_in: float | None = Field(
        default=None, description="Seconds until the next attempt, when one was scheduled."
    )


class DeadLetterReason(StrEnum):
    """Why a task went to the dead-letter store."""

    EXHAUSTED = "exhausted"  # every allowed attempt failed
    NON_RETRYABLE = "non_retryable"  # an error its policy does not retry
    INVALID_PAYLOAD = "invalid_payload"  # the worker's validation refused the payload
    LOST = "lost"  # its runs kept killing the worker (poison) or hit the hard time limit


class DeadLetterState(StrEnum):
    """Where a dead letter is in its life."""

    DEAD = "dead"
    REPLAYING = "replaying"  # a replay was started; finishing it again is safe
    REPLAYED = "replayed"


class DeadLetter(BaseModel):
    """A task that could not succeed, with everything needed to understand and replay it."""

    id: str
    task_id: str
    task_name: str
    queue: str
    payload: dict[str, Any]
    reason: DeadLetterReason
    error_type: str
    error_message: str
    traceback: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    node: str
    trace_id: str | None = None
    idempotency_key: str | None = None
    dead_at: datetime
    state: DeadLetterState = DeadLetterState.DEAD
    replayed_task_id: str | None = None
    replayed_at: datetime | None = None


class TaskStatus(StrEnum):
    """A task's state as a handle reports it (Celery's states, named)."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


WIRE: tuple[type[BaseModel], ...] = (Attempt, DeadLetter)
