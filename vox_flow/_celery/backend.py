"""Celery's Redis result backend, writing a run's buffered attempt records with its result.

A worker buffers the record of a successful attempt (``AttemptLog.record_soon``) and its
keeper writes it within ``FLUSH_SECONDS``, but Celery stores the result as soon as the task
returns: a caller woken by the result could read the attempts before that record. Here the
result's write (Celery's ``RedisBackend._set``: ``SET``/``SETEX`` and ``PUBLISH`` in one
``MULTI``) also appends the task's buffered records, taken out of the buffer, in the same
transaction: no extra round trip, and whoever sees the result sees its attempts. A write that
fails for good hands the records back to the buffer, for the keeper.

Celery hooks relied on: ``BaseKeyValueStoreBackend._store_result`` (which knows the task id)
calls ``_set_with_state`` -> ``set`` -> ``ensure(_set, (key, value, expires))`` (which does
not); ``_store_result`` returns without writing when a success is stored already. Other
result backends keep Celery's own: a run's attempts then follow its result within
``FLUSH_SECONDS``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from celery.app import backends
from celery.backends import redis as celery_redis

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery.backends.base import Backend

    from vox_flow.application import VoxFlow
    from vox_flow.attempts import AttemptLog


# Celery's Redis backend, untyped here: its stubs leave out the private parts used below.
_RedisBackend: Any = celery_redis.RedisBackend


class ResultBackend(_RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend; a stored result carries its task's buffered attempt
    records (those of ``attempts()``, this process's attempt log of the app)."""

    def __init__(
        self, *args: Any, attempts: Callable[[], AttemptLog] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # None (e.g. rebuilt by Celery's __reduce__, which knows nothing of it): Celery's own.
        self._attempts = attempts
        # The writes of the result being stored by this thread, for _set (which has no task id).
        self._writes = threading.local()

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        log = self._attempts() if self._attempts is not None else None
        records = log.take(task_id) if log is not None else []
        if log is None or not records:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        self._writes.commands = log.writes_of(task_id, records)
        try:
            stored = super()._store_result(task_id, result, state, traceback, request, **kwargs)
        except BaseException:
            log.put_back(task_id, records)
            raise
        finally:
            unsent = self._writes.commands is not None
            self._writes.commands = None
        if unsent:  # nothing was written (a success was stored already): the keeper writes them
            log.put_back(task_id, records)
        return stored

    def _set(self, key: str, value: Any, expires: int | None = None) -> None:
        commands: list[tuple[str, ...]] | None = getattr(self._writes, "commands", None)
        if not commands:
            super()._set(key, value, expires)
            return
        if expires is None:
            expires = self.expires
        # Celery's _set, with the attempt records in the same transaction. Retried whole by
        # Celery (ensure) on a connection error: MULTI applies all of it or none.
        with self.client.pipeline() as pipe:
            for command in commands:
                pipe.execute_command(*command)
            pipe.set(key, value, ex=expires or None)  # Celery's SETEX, or SET without one
            pipe.publish(key, value)
            pipe.execute()
        self._writes.commands = None


def for_typed_tasks(app: VoxFlow, attempts: Callable[[], AttemptLog]) -> Backend:
    """A new backend for ``app``'s typed tasks: a :class:`ResultBackend` when its result
    backend is Celery's Redis backend (``redis://``, ``rediss://``, ``redis+socket://``),
    else ``app.backend`` (Celery's own)."""
    if app.backend_cls is None:
        # (class, url): the stubs say a class alone.
        found: Any = backends.by_url(app.conf.result_backend, app.loader)
        cls, url = found
        if cls is _RedisBackend:
            backend: Backend = ResultBackend(app=app, url=url, attempts=attempts)
            return backend
    return app.backend
