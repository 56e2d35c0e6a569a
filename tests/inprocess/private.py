"""A private app on its own Redis server, run by Celery's embedded worker in this process.

For tests that stop or kill their broker, or need settings the session's app does not have
(a short lease): the session's server and app (tests/conftest.py) stay untouched.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import _state, signals
from celery.contrib.testing import worker as embedded
from celery.worker import state

from vox_flow.app import create_app
from vox_flow.application import VoxFlow
from vox_flow.config import Settings
from vox_flow.worker.install import TelemetryStep

# Set by Celery's logging setup for the processes it forks: not a test's to keep.
_CELERY_ENV = ("CELERY_LOG_LEVEL", "CELERY_LOG_FILE",
               "_MP_FORK_LOGLEVEL_", "_MP_FORK_LOGFILE_", "_MP_FORK_LOGFORMAT_")  # fmt: skip


def private_app(url: str, **settings: Any) -> VoxFlow:
    """An app of its own on the broker ``url``, with ``settings``."""
    app = create_app(Settings(broker_url=url, **settings))
    # This process is a test, not an entry point: leave OpenTelemetry's globals alone.
    app.steps["worker"].discard(TelemetryStep)
    return app


@contextmanager
def embedded_worker(app: VoxFlow, name: str, shutdown_timeout: float = 15.0) -> Iterator[Any]:
    """Celery's embedded worker for ``app`` in a thread of this process (``name@private``),
    without letting it reconfigure the process for good (logging, warning filters,
    environment, default app)."""

    def configured(**_: Any) -> None:
        return None  # the process's logging is set up already (pytest's capture)

    saved_env = {key: os.environ.get(key) for key in _CELERY_ENV}
    saved_default, saved_current = _state.default_app, _state.get_current_app()
    signals.setup_logging.connect(configured, weak=False)
    state.should_terminate = None
    try:
        with (
            warnings.catch_warnings(),
            embedded.start_worker(
                app,
                pool="solo",
                hostname=f"{name}@private",
                perform_ping_check=False,
                shutdown_timeout=shutdown_timeout,
            ) as worker,
        ):
            yield worker
        logging.captureWarnings(False)
    finally:
        signals.setup_logging.disconnect(configured)
        _state.set_default_app(saved_default)
        saved_current.set_current()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
