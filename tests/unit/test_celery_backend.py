"""Which result backend typed tasks store through (no broker: nothing here connects)."""

from __future__ import annotations

from typing import Any

import pytest
from celery.backends.redis import RedisBackend

from vox_flow._celery.backend import ResultBackend, for_typed_tasks
from vox_flow.app import create_app
from vox_flow.attempts import AttemptLog
from vox_flow.config import Settings
from vox_flow.worker.execution import VoxTask


def _no_log() -> AttemptLog:
    raise AssertionError("not used here")


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0?ssl_cert_reqs=required"]
)
def test_a_redis_result_backend_writes_attempts_with_results(url: str) -> None:
    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0", result_backend=url))
    backend = for_typed_tasks(app, _no_log)
    assert isinstance(backend, ResultBackend) and isinstance(backend, RedisBackend)
    assert backend.as_uri() == app.backend.as_uri()


def test_another_result_backend_is_celery_s_own() -> None:
    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0", result_backend="cache+memory://"))
    assert for_typed_tasks(app, _no_log) is app.backend


def test_typed_tasks_store_through_one_backend_per_thread_of_their_app() -> None:
    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0"))

    @app.task(base=VoxTask, name="test.backend.one", shared=False)
    def one() -> None: ...

    @app.task(base=VoxTask, name="test.backend.two", shared=False)
    def two() -> None: ...

    backend: Any = one.backend
    assert isinstance(backend, ResultBackend) and two.backend is backend
    assert app.backend is not backend  # Celery's own, for everything else
    one.backend = app.backend  # set explicitly, as Celery allows
    assert one.backend is app.backend and two.backend is backend
