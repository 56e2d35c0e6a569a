"""The Celery app: ``celery -A vox_flow.app worker`` loads the ``app`` defined here.

``VoxFlow`` is a Celery app that also carries vox_flow's settings, its typed-task registry and
a Redis client for vox_flow's own keys. Settings and broker choices are made here only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery

from vox_flow.config import Settings, load_settings

if TYPE_CHECKING:
    from vox_flow.runslot import SlotWriter
    from vox_flow.tasks import TypedTask

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"

# Kombu's own visibility timeout only backs up vox_flow's leases (see lease.py): it must
# never fire first, or a long task would be redelivered while it still runs.
KOMBU_VISIBILITY_TIMEOUT = 7 * 86_400


class VoxFlow(Celery):
    """A Celery app with vox_flow's settings, typed-task registry and Redis client."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        # Current app: opentelemetry-instrumentation-celery finds tasks through it.
        super().__init__("vox_flow", **kwargs)
        self.settings = settings
        self.typed: dict[str, TypedTask[Any, Any]] = {}
        self._redis: redis.Redis | None = None
        self._redis_pid = 0
        self.slot_writer: SlotWriter | None = None  # set in a `vox-flow worker` child

    @property
    def redis(self) -> redis.Redis:
        """A client of the broker's Redis for vox_flow's own keys (one per process)."""
        if self._redis is None or self._redis_pid != os.getpid():
            self._redis = redis.Redis.from_url(self.conf.broker_url)
            self._redis_pid = os.getpid()
        return self._redis


def create_app(settings: Settings | None = None) -> VoxFlow:
    """A configured app: JSON only, late ack, reject on worker loss, events on for Flower."""
    settings = settings or load_settings()
    broker = settings.broker_url or DEFAULT_BROKER
    app = VoxFlow(settings)
    app.conf.update(
        broker_url=broker,
        result_backend=settings.result_backend or broker,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": KOMBU_VISIBILITY_TIMEOUT},
        result_backend_transport_options={"visibility_timeout": KOMBU_VISIBILITY_TIMEOUT},
        # JSON only: pickle would let a message execute code in the worker.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # At-least-once: ack after the run, requeue when the worker process dies mid-run.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=settings.worker_prefetch,
        task_time_limit=settings.task_hard_time_limit,
        # Flower, unmodified, needs these events.
        worker_send_task_events=True,
        task_send_sent_event=True,
        result_expires=settings.result_ttl_seconds,
        task_ignore_result=settings.ignore_results,
        result_extended=True,
        enable_utc=True,
        imports=tuple(settings.task_modules),
    )
    from vox_flow.hooks import install

    install(app)
    return app


app = create_app()
