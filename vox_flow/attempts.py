"""The attempt log: every run of a task (start, end, node, outcome, error), kept in Redis.

Records of failed, retried, lost and dead-lettered attempts are written before the message is
acknowledged. Records of successful attempts are buffered and written by a background thread
within ``FLUSH_SECONDS`` (one pipelined write for many runs), so the common case costs no
broker round trip; a worker killed inside that window loses the records of its last successful
runs, not the runs or their results.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time

import redis

from vox_flow.contracts.task import Attempt
from vox_flow.keyspace import attempts as attempts_key

FLUSH_SECONDS = 0.05


class AttemptLog:
    """Append-only per-task attempt records, expiring ``ttl`` seconds after the last one."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self._pending: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._flusher_pid = 0

    def record(
        self, task_id: str, attempt: Attempt, pipe: redis.client.Pipeline | None = None
    ) -> None:
        """Append one attempt now (inside ``pipe`` when given, so it commits with other writes)."""
        target = pipe if pipe is not None else self.client.pipeline(transaction=False)
        key = attempts_key(task_id)
        target.rpush(key, attempt.model_dump_json())
        target.expire(key, self.ttl)
        if pipe is None:
            target.execute()

    def record_soon(self, task_id: str, attempt: Attempt) -> None:
        """Append one attempt within ``FLUSH_SECONDS``, batched with others."""
        with self._lock:
            self._pending.append((task_id, attempt.model_dump_json()))
        if self._flusher_pid != os.getpid():
            self._start_flusher()

    def flush(self) -> None:
        """Write every buffered record now."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for task_id, record in pending:
                    key = attempts_key(task_id)
                    pipe.rpush(key, record)
                    pipe.expire(key, self.ttl)
                pipe.execute()
        except redis.RedisError:
            with self._lock:  # keep them for the next round
                self._pending[:0] = pending
            raise

    def list(self, task_id: str) -> list[Attempt]:
        """Every recorded attempt of ``task_id``, oldest first (buffered ones included)."""
        self.flush()
        raw = self.client.lrange(attempts_key(task_id), 0, -1)
        return [Attempt.model_validate_json(item) for item in raw]

    def _start_flusher(self) -> None:
        self._flusher_pid = os.getpid()  # a forked child needs its own thread
        threading.Thread(target=self._flush_forever, name="vf-attempts", daemon=True).start()
        atexit.register(self.flush)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            with contextlib.suppress(redis.RedisError):  # kept; retried next round
                self.flush()
