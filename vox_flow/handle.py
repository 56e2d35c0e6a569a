"""``TaskHandle``: a submitted run's id, trace id, status, typed result and attempts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celery.result import AsyncResult
from pydantic import BaseModel

from vox_flow.attempts import AttemptLog
from vox_flow.contracts.task import Attempt, TaskStatus
from vox_flow.errors import DeadLettered, TaskFailed
from vox_flow.results import decode_result

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow

Out = TypeVar("Out", bound=BaseModel)


class TaskHandle(Generic[Out]):
    """A submitted run: its id, trace id, status and typed result."""

    def __init__(
        self, app: VoxFlow, task_id: str, output_model: type[Out], trace_id: str | None = None
    ) -> None:
        self.app = app
        self.id = task_id
        self.output_model = output_model
        self.trace_id = trace_id
        self._async: AsyncResult[Any] = AsyncResult(task_id, app=app)

    @property
    def status(self) -> TaskStatus:
        """Celery's state of the run (PENDING until a worker reports on it)."""
        return TaskStatus(self._async.state)

    def result(self, timeout: float | None = None) -> Out:
        """Wait for the output model; raises TaskFailed (with its dead letter id) on failure."""
        value = self._async.get(timeout=timeout, propagate=False)
        if self._async.failed():
            if isinstance(value, DeadLettered):
                raise TaskFailed(self.id, str(value), value.dead_letter_id)
            raise TaskFailed(self.id, f"{type(value).__name__}: {value}")
        envelope = decode_result(value)
        if envelope is not None:
            self.trace_id = self.trace_id or envelope.get("trace_id")
            value = envelope["output"]
        return self.output_model.model_validate(value)

    def attempts(self) -> list[Attempt]:
        """Every attempt recorded for this run so far, oldest first. Once :meth:`result`
        returned, its successful attempt is among them (with a Redis result backend the
        record is written with the result; with another, it follows within 50 ms)."""
        return AttemptLog(self.app.redis, self.app.settings.attempts_ttl_seconds).list(self.id)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id} {self.output_model.__name__}>"
