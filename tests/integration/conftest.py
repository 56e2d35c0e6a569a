"""Integration fixtures: real worker processes against the session's private Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.workers import WorkerProcess, celery_worker_args, worker_env

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(redis_url: str, data_dir: Path, tmp_path: Path) -> Iterator[StartWorker]:
    """Start real ``celery worker`` processes; every one is stopped after the test.

    ``start_worker("w1", pool="solo", lease_seconds="4")``: extra keyword arguments become
    VOX_FLOW_* settings of that worker.
    """
    started: list[WorkerProcess] = []

    def start(
        name: str,
        pool: str = "solo",
        concurrency: int = 1,
        args: list[str] | None = None,
        **settings: str,
    ) -> WorkerProcess:
        worker = WorkerProcess(
            name=name,
            args=args or celery_worker_args(name, pool, concurrency),
            env=worker_env(redis_url, data_dir, **settings),
            log_path=tmp_path / f"{name}.log",
        )
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
