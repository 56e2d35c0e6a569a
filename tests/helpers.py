"""Helpers shared by the tests that run against the session's Redis (integration, in-process).

Nothing here touches ``vox_flow.app.app`` when imported: a conftest may import this module
before the session has configured the app (tests/conftest.py), so the app is looked up when a
helper runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import vox_flow.app
from vox_flow.contracts.audit import AuditEntry
from vox_flow.contracts.task import Attempt, DeadLetter, DeadLetterReason
from vox_flow.handle import TaskHandle

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy, and return that; AssertionError
    naming ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return found


def queue_length(name: str) -> int:
    """Messages waiting on the broker queue ``name``."""
    return int(vox_flow.app.app.redis.llen(name))


def recorded_attempts(handle: TaskHandle[Any], count: int, within: float = 2.0) -> list[Attempt]:
    """The handle's attempts once ``count`` are recorded (a success is recorded within 50 ms),
    or what is recorded after ``within`` seconds: the caller's assertion shows what is missing."""
    deadline = time.monotonic() + within
    while len(attempts := handle.attempts()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return attempts


def dead_letter(payload: dict[str, Any], *, task: Any, minutes_ago: float = 0) -> DeadLetter:
    """A dead letter of ``task`` as a worker writes it (one failed attempt), without a worker."""
    letter_id = str(uuid.uuid4())
    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return DeadLetter(
        id=letter_id,
        task_id=letter_id,
        task_name=task.name,
        queue=task.queue,
        payload=payload,
        reason=DeadLetterReason.EXHAUSTED,
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


def audit_entries(data_dir: Path) -> list[AuditEntry]:
    """Every entry of the audit log in ``data_dir``'s control store, oldest first."""
    # Imported here: the control store (SQLAlchemy, PyNaCl) is heavy and most tests never
    # read the audit log.
    from vox_flow.audit.log import AuditLog
    from vox_flow.config import Settings
    from vox_flow.store import open_store

    store = open_store(Settings(data_dir=data_dir))
    try:
        return list(AuditLog(store).entries())
    finally:
        store.dispose()


def fire_time(key: str) -> datetime:
    """The fire time inside a schedule fire's idempotency key ``schedule:NAME:ISO``."""
    return datetime.fromisoformat(key.split(":", 2)[2])
