"""Celery's worker ``Request``, told when a run is lost to a dead child or a hard time limit.

Celery reports such a run as a failure with ``WorkerLostError`` or ``TimeLimitExceeded``
(billiard's exceptions, through ``Request.on_failure`` / ``on_timeout``). A task class whose
``Request`` is :class:`LostRunRequest` and that has a ``run_lost(lost)`` method may take the
run over: when it returns True, the message was settled by it and Celery's own failure
handling is skipped (the message is acknowledged: it already left ``unacked``).

The request also shows a text result as the text: a typed task returns JSON text, and Celery's
trace puts ``saferepr(text)`` in ``task-succeeded`` (the JSON quoted as a Python string, which
Flower showed as a string in a string). The stored result is not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery.worker.request import Request

if TYPE_CHECKING:
    from billiard.einfo import ExceptionInfo


@dataclass(frozen=True)
class LostRun:
    """What the worker knows of a run it lost."""

    task_name: str
    delivery_tag: str
    hostname: str | None
    started_at: datetime | None
    error_type: str
    error_message: str


def unquoted(shown: str) -> str:
    """The text inside ``shown`` when it is Celery's ``saferepr`` of a string (quoted with
    ``'``, inner ``'`` escaped, maybe truncated with ``...``); else ``shown`` itself."""
    if len(shown) >= 2 and shown[0] == shown[-1] == "'":
        # Exact: saferepr escapes each ' as \' and nothing else, so every \' it left is one '.
        return shown[1:-1].replace("\\'", "'")
    return shown


class LostRunRequest(Request):
    """Celery's request, with runs lost to a dead child or a hard time limit handed over, and
    a text result shown as the text."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded" and isinstance(fields.get("result"), str):
            fields["result"] = unquoted(fields["result"])
        super().send_event(type, **fields)

    def _lose(self, error_type: str, message: str) -> bool:
        handler = getattr(self.task, "run_lost", None)
        if handler is None:
            return False
        lost = LostRun(
            task_name=self.task.name,
            delivery_tag=self.message.delivery_tag,
            hostname=self.hostname,
            started_at=datetime.fromtimestamp(self.time_start, UTC) if self.time_start else None,
            error_type=error_type,
            error_message=message,
        )
        if not handler(lost):
            return False
        self.acknowledge()  # the handler's settle already took it out of 'unacked'
        return True

    def on_failure(
        self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = exc_info.exception
        exc = getattr(exc, "exc", exc)  # billiard wraps it in ExceptionWithTraceback
        if isinstance(exc, WorkerLostError) and self._lose("WorkerLostError", str(exc)):
            return
        if isinstance(exc, TimeLimitExceeded) and self._lose(
            "TimeLimitExceeded", f"hard time limit ({exc.args[0] if exc.args else '?'}s)"
        ):
            return
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft and self._lose("TimeLimitExceeded", f"hard time limit ({timeout}s)"):
            return
        super().on_timeout(soft, timeout)
