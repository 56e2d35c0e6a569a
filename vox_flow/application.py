"""``VoxFlow``: a Celery app that also carries vox_flow's settings, its typed-task registry and
a Redis client for vox_flow's own keys.

``vox_flow.app.create_app`` configures one and attaches the worker side; nothing here reads
the environment. (Celery itself makes each new app its "current app", as for any Celery app;
opentelemetry-instrumentation-celery finds a worker's tasks through it.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery, Task

if TYPE_CHECKING:
    from vox_flow.config import Settings
    from vox_flow.tasks import TypedTask

# How a typed task runs in a worker: (typed task, bound Celery task, payload) -> result.
RunTyped = Callable[[Any, Any, Any], Any]
# Builds the result backend of an app's typed tasks (see VoxFlow.typed_backend).
BuildBackend = Callable[["VoxFlow"], Any]


def _not_wired(typed: Any, task: Any, payload: Any) -> Any:
    raise RuntimeError(
        f"{typed.name}: this app cannot run typed tasks; build it with "
        "vox_flow.app.create_app(settings)"
    )


class VoxFlow(Celery):
    """A Celery app with vox_flow's settings, typed-task registry and Redis client."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("vox_flow", **kwargs)
        self.settings = settings
        self.typed: dict[str, TypedTask[Any, Any]] = {}
        # Set by create_app: the worker side (vox_flow.worker) plugs in here, so that task
        # definitions (a record) never import the code that runs them.
        self.typed_task_base: type[Task] = Task  # type: ignore[type-arg]
        self.run_typed: RunTyped = _not_wired
        self._redis: redis.Redis | None = None
        self._redis_pid = 0
        self._typed_backends = threading.local()

    @property
    def redis(self) -> redis.Redis:
        """A client of the broker's Redis for vox_flow's own keys (one per process)."""
        if self._redis is None or self._redis_pid != os.getpid():
            self._redis = redis.Redis.from_url(self.conf.broker_url)
            self._redis_pid = os.getpid()
        return self._redis

    def typed_backend(self, build: BuildBackend) -> Any:
        """This thread's result backend for the typed tasks: the one ``build(self)`` made the
        first time this thread asked (one per thread, as Celery keeps ``backend``).

        A worker's typed tasks store their results through it (worker/execution.py builds a
        Redis backend that writes a run's buffered attempt records with its result:
        vox_flow/_celery/backend.py); everything else uses Celery's ``backend``.
        """
        backend = getattr(self._typed_backends, "backend", None)
        if backend is None:
            backend = self._typed_backends.backend = build(self)
        return backend
