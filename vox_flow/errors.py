"""vox_flow's exceptions: each says what went wrong and, where it can, which field."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class VoxFlowError(Exception):
    """Base class of every error vox_flow raises on purpose."""


class PayloadError(VoxFlowError, ValueError):
    """A payload does not fit its task's input model; nothing was enqueued.

    ``errors`` lists ``(field path, reason)`` pairs; ``index`` is the item's position in a batch.
    """

    def __init__(self, task: str, errors: list[tuple[str, str]], index: int | None = None):
        self.task = task
        self.errors = errors
        self.index = index
        where = f" (batch item {index})" if index is not None else ""
        detail = "; ".join(f"{field}: {reason}" for field, reason in errors)
        super().__init__(f"invalid payload for {task}{where}: {detail}")

    @classmethod
    def from_validation(
        cls, task: str, exc: ValidationError, index: int | None = None
    ) -> PayloadError:
        """Name every failing field (dotted path) with pydantic's reason."""
        errors = [
            (".".join(str(part) for part in err["loc"]) or "(payload)", err["msg"])
            for err in exc.errors()
        ]
        return cls(task, errors, index)


class JsonValueError(VoxFlowError, ValueError):
    """A value (or a text) is not the strict JSON vox_flow accepts (see ``vox_flow.jsonvalue``).

    ``field`` is the path of the bad part, e.g. ``payload.items[3].x`` (empty for the value
    itself when no name was given); ``reason`` says what is wrong with it.
    """

    def __init__(self, field: str, reason: str):
        # Both args kept as-is, so that the error pickles and Celery can rebuild it.
        super().__init__(field, reason)
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class SubmitArgumentError(VoxFlowError, ValueError):
    """An argument of ``submit`` / ``submit_many`` is invalid; nothing was enqueued.

    ``argument`` names it (``eta``, ``priority``, ``idempotency_keys[2]``...), ``reason`` says why.
    """

    def __init__(self, argument: str, reason: str):
        super().__init__(argument, reason)
        self.argument = argument
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid submit argument {self.argument}: {self.reason}; nothing was enqueued"


class WorkflowTypeError(VoxFlowError, TypeError):
    """Two steps of a workflow do not fit: one's output is not the next one's input."""


class TaskFailed(VoxFlowError):
    """A task ended without a result; ``dead_letter_id`` names its dead letter if it has one."""

    def __init__(self, task_id: str, message: str, dead_letter_id: str | None = None):
        self.task_id = task_id
        self.dead_letter_id = dead_letter_id
        super().__init__(message)


class DeadLettered(Exception):
    """Raised in the worker after a task went to the dead-letter store (marks it FAILURE)."""

    def __init__(self, dead_letter_id: str, error_type: str = "", message: str = ""):
        # The three args are kept as-is so Celery can rebuild this from a stored result.
        super().__init__(dead_letter_id, error_type, message)
        self.dead_letter_id = dead_letter_id

    def __str__(self) -> str:
        dead_letter_id, error_type, message = self.args
        return f"dead-lettered as {dead_letter_id}: {error_type}: {message}"


class BrokerNotDurable(VoxFlowError):
    """The broker did not confirm that a submit reached its append-only file."""


class UnknownTask(VoxFlowError, LookupError):
    """No typed task is registered under that name."""
