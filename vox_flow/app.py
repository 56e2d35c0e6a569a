"""The composition root: ``create_app(settings)`` builds a configured app.

``celery -A vox_flow.app worker`` (and ``vox-flow``'s commands) load ``app`` from here: the
one module-level instance, built from the ``VOX_FLOW_*`` environment the first time it is
used, not when this module is imported. Importing this module reads nothing, connects to
nothing and installs no telemetry: entry points (the worker process, beat, the control
service) start telemetry themselves (``vox_flow.telemetry.init``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from vox_flow._celery.versions import check_transport
from vox_flow.application import VoxFlow
from vox_flow.config import Settings, load_settings

if TYPE_CHECKING:
    app: VoxFlow

__all__ = ["AlreadyConfigured", "VoxFlow", "app", "configure", "create_app"]

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"

# Kombu's own visibility timeout only backs up vox_flow's leases (worker/lease.py): it must
# never fire first, or a long task would be redelivered while it still runs.
KOMBU_VISIBILITY_TIMEOUT = 7 * 86_400


def create_app(settings: Settings | None = None) -> VoxFlow:
    """A configured app: JSON only, late ack, reject on worker loss, events on for Flower.

    Raises ``IncompatibleCelery`` when the installed Celery/kombu lack what vox_flow relies on.
    """
    check_transport()
    settings = settings or load_settings()
    broker = settings.broker_url or DEFAULT_BROKER
    app = VoxFlow(settings)
    app.conf.update(
        broker_url=broker,
        broker_transport=transport_for(broker),
        result_backend=settings.result_backend or broker,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": KOMBU_VISIBILITY_TIMEOUT,
            # An acknowledgement that meets a broker outage is retried while the message's
            # lease could still be renewed; after that it would come back to a queue anyway.
            "ack_retry_seconds": settings.lease_seconds,
        },
        result_backend_transport_options={"visibility_timeout": KOMBU_VISIBILITY_TIMEOUT},
        # A result that meets a broker outage is stored once the broker is back (for about
        # 20 s), not dropped: a run that finished must not look lost.
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        result_backend_max_sleep_between_retries_ms=1000,
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
    # The worker side: how typed tasks run, and the bootsteps of a worker process. Imported
    # here, in the composition root, so that no record module imports the worker.
    from vox_flow.worker.install import install

    install(app)
    return app


def transport_for(broker_url: str) -> str | None:
    """vox_flow's own transport (the atomic fetch, _celery/transport.py) for a ``redis://``
    broker; None (kombu's choice by scheme) for any other."""
    if broker_url.partition("://")[0] == "redis":
        return "vox_flow._celery.transport:Transport"
    return None


_lock = threading.Lock()
_default: VoxFlow | None = None


class AlreadyConfigured(RuntimeError):
    """``configure`` was called once ``app`` existed."""


def configure(settings: Settings) -> VoxFlow:
    """Build ``app`` from ``settings`` instead of the environment (for a process that embeds
    vox_flow, or a test session). Call it before anything uses ``app``; raises
    AlreadyConfigured once ``app`` exists."""
    global _default
    with _lock:
        if _default is not None:
            raise AlreadyConfigured(
                "vox_flow.app.app is already built (something used it before configure())"
            )
        _default = create_app(settings)
        return _default


def __getattr__(name: str) -> Any:
    # ``app`` is built on first use (PEP 562), so importing this module has no effect.
    global _default
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if _default is None:
            _default = create_app()
        return _default
