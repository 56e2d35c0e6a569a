"""The attempt log: every run of a task (start, end, node, outcome, error), kept in Redis.

Records of failed, retried, lost and dead-lettered attempts are written before the message is
acknowledged. Records of successful attempts are buffered (:meth:`AttemptLog.record_soon`)
and written by the worker runtime's keeper thread every ``FLUSH_SECONDS`` (one pipelined
write for many runs), so the common case costs no broker round trip; a worker killed inside
that window loses the records of its last successful runs, not the runs or their results.
A run's result, when a Redis result backend stores it, carries that run's buffered records
in the same transaction (:meth:`AttemptLog.take`, vox_flow/_celery/backend.py): whoever
sees the result sees its attempts. With another result backend, or results ignored, they
follow within ``FLUSH_SECONDS``.

:meth:`AttemptLog.writes` is the one definition of the format: ``record`` sends it, and the
settle step (worker/settle.py) runs it inside its compare-and-move script.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import redis

from vox_flow.contracts.task import Attempt
from vox_flow.keyspace import attempts as attempts_key

if TYPE_CHECKING:
    import builtins

FLUSH_SECONDS = 0.05


class AttemptLog:
    """Append-only per-task attempt records, expiring ``ttl`` seconds after the last one."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self._pending: list[tuple[str, str]] = []
        self._in_flight: set[str] = set()  # task ids whose records a flush is writing now
        self._lock = threading.Lock()  # guards the buffer (record_soon holds it briefly)
        # Held for a whole flush, so that list() waits for a flush another thread started
        # and sees every record buffered before it was called.
        self._flushing = threading.Lock()

    def writes(self, task_id: str, attempt: Attempt) -> builtins.list[tuple[str, ...]]:
        """The Redis commands (name, key, arguments…) that append one attempt record."""
        return self._writes(task_id, attempt.model_dump_json())

    def record(
        self, task_id: str, attempt: Attempt, pipe: redis.client.Pipeline | None = None
    ) -> None:
        """Append one attempt now (inside ``pipe`` when given, so it commits with other writes)."""
        target = pipe if pipe is not None else self.client.pipeline(transaction=False)
        for command in self.writes(task_id, attempt):
            target.execute_command(*command)  # type: ignore[no-untyped-call]
        if pipe is None:
            target.execute()

    def record_soon(self, task_id: str, attempt: Attempt) -> None:
        """Buffer one attempt for the next :meth:`flush` (no round trip here)."""
        with self._lock:
            self._pending.append((task_id, attempt.model_dump_json()))

    def flush(self) -> None:
        """Write every buffered record now; on a Redis error they stay buffered, and it raises."""
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, []
                self._in_flight = {task_id for task_id, _ in pending}
            if not pending:
                return
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    for task_id, record in pending:
                        for command in self._writes(task_id, record):
                            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                    pipe.execute()
            except redis.RedisError:
                with self._lock:  # kept, in order, for the next flush
                    self._pending[:0] = pending
                raise
            finally:
                with self._lock:
                    self._in_flight = set()

    def take(self, task_id: str) -> builtins.list[str]:
        """Remove ``task_id``'s buffered records (JSON, oldest first) and return them, for a
        caller that writes them itself (:meth:`writes_of`); if its write fails, it hands them
        back with :meth:`put_back`. A flush writing earlier records of ``task_id`` is waited
        for, so each record is either returned here or already written."""
        taken: builtins.list[str] = []
        while True:
            with self._lock:
                mine = [record for tid, record in self._pending if tid == task_id]
                if mine:
                    self._pending = [item for item in self._pending if item[0] != task_id]
                taken[:0] = mine  # a failed flush puts back records older than those taken
                busy = task_id in self._in_flight
            if not busy:
                return taken
            with self._flushing:  # the flush ends (written, or its records put back)
                pass

    def put_back(self, task_id: str, records: builtins.list[str]) -> None:
        """Buffer records :meth:`take` returned again, ahead of newer ones, for the next flush."""
        if records:
            with self._lock:
                self._pending[:0] = [(task_id, record) for record in records]

    def writes_of(
        self, task_id: str, records: builtins.list[str]
    ) -> builtins.list[tuple[str, ...]]:
        """The Redis commands that append ``records`` (JSON, as :meth:`take` returns them)."""
        return [command for record in records for command in self._writes(task_id, record)]

    def list(self, task_id: str) -> builtins.list[Attempt]:
        """Every recorded attempt of ``task_id``, oldest first (this log's buffered ones
        included: they are flushed first)."""
        self.flush()
        raw = self.client.lrange(attempts_key(task_id), 0, -1)
        return [Attempt.model_validate_json(item) for item in raw]

    def _writes(self, task_id: str, record: str) -> builtins.list[tuple[str, ...]]:
        key = attempts_key(task_id)
        return [("RPUSH", key, record), ("EXPIRE", key, str(self.ttl))]
