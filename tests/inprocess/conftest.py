"""In-process tier: a real Celery worker in a thread of this process, on the session's app.

``start_worker("w1")`` runs Celery's embedded worker (``celery.contrib.testing.worker``) on
``vox_flow.app.app``, as built for the session (tests/conftest.py): the same Redis, the same
consumer bootsteps (the lease keeper), the same typed-task executor as a ``celery worker``
process, without the seconds a subprocess takes to start and stop. The typed tasks are those of
``tests.integration.tasks``, imported here. Whatever needs a worker to be a separate process
(kills, lapsed leases, the supervisor, replicas, hard time limits) stays in tests/integration.

The worker's bootsteps run as in a worker process, telemetry's included: the first worker
started installs OpenTelemetry's tracer provider and Celery instrumentation in this process,
for the rest of the session (``vox_flow.telemetry.init`` runs once per process).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from unittest import mock

import pytest
from celery.app import trace
from celery.contrib.testing import worker as embedded
from celery.worker import state

from vox_flow.application import VoxFlow

# A worker that is not up by then will not come up: fail instead of waiting for pytest-timeout.
READY_TIMEOUT = 30.0
# The solo pool runs a task in the worker's thread: stopping waits for the running task, and
# every task these tests leave behind ends within a few seconds.
SHUTDOWN_TIMEOUT = 15.0
# kombu's BRPOP timeout on the worker's consumer connection (1 s by default), see start().
POLLING_INTERVAL = 0.1


class EmbeddedWorker(embedded.TestWorkController):
    """Celery's test worker, set up as ``celery worker`` sets itself up, and which reports a
    start that failed instead of hanging (Celery's ``ensure_started`` waits forever for a
    worker that died while starting)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._exited = threading.Event()
        super().__init__(*args, **kwargs)

    def on_init_blueprint(self) -> None:
        # What celery.apps.worker.Worker does here and the embedded worker does not: without
        # it, runs see the machine's host name as their request's hostname, not the node's
        # (vox_flow records the node of every attempt and dead letter). Undone by the fixture.
        trace.setup_worker_optimizations(self.app, self.hostname)

    def start(self) -> None:
        try:
            super().start()
        finally:
            self._exited.set()

    def ensure_started(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._on_started.wait(0.05):
            if self._exited.is_set():
                raise RuntimeError(f"in-process worker {self.hostname} exited while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"in-process worker {self.hostname} not ready")


StartWorker = Callable[[str], EmbeddedWorker]


def _stop_now(worker: EmbeddedWorker) -> None:
    """Stop the worker as Celery's embedded worker does (``state.should_terminate``), and wake
    its event loop, which would otherwise see that only at its next poll timeout (a second)."""
    state.should_terminate = 0
    worker.hub.call_soon(lambda: None)


def _check_detached(app: VoxFlow) -> None:
    """A stopped worker's consumer must let go of its leases: this process would otherwise go
    on renewing and taking back messages while later tests run theirs."""
    from vox_flow.worker.runtime import WorkerRuntime

    if WorkerRuntime.of(app).leases is not None:
        raise RuntimeError("the stopped in-process worker still keeps leases in this process")


def _check_vox_flow_runs(worker: EmbeddedWorker) -> None:
    """Refuse a worker without vox_flow's side: a test here would then prove nothing."""
    from vox_flow.worker.execution import VoxTask, execute
    from vox_flow.worker.runtime import WorkerRuntime

    app = worker.app
    # create_app adds its bootsteps to app.steps; each must be running in its blueprint.
    for kind, blueprint in (("worker", worker.blueprint), ("consumer", worker.consumer.blueprint)):
        running = {type(step) for step in blueprint.steps.values()}
        if missing := set(app.steps[kind]) - running:
            raise RuntimeError(f"the in-process worker lacks the {kind} steps {missing}")
    runtime = WorkerRuntime.of(app)
    if runtime.leases is None or not runtime.alive:
        raise RuntimeError("the in-process worker's runtime is not keeping its leases")
    if app.run_typed is not execute or app.typed_task_base is not VoxTask:
        raise RuntimeError("the session app does not run typed tasks through vox_flow")


@pytest.fixture
def start_worker(redis_url: str) -> Iterator[StartWorker]:
    """Start this test's in-process worker: ``start_worker("w1")`` (node name ``w1@inprocess``),
    a solo pool of one, consuming every typed task's queue. Stopped after the test."""
    # Imported when used: a conftest loads before the session has configured the app.
    from tests.integration import tasks  # noqa: F401  (registers the typed tasks it runs)
    from vox_flow.app import app

    with ExitStack() as stack:
        started: list[EmbeddedWorker] = []
        # After the worker stopped: the app's client side goes back to plain tracing, and its
        # clock to a real lock (the worker's hub swaps in a dummy one, for its single thread).
        stack.callback(trace.reset_worker_optimizations, app)
        stack.callback(setattr, app.clock, "mutex", app.clock.mutex)

        def start(name: str) -> EmbeddedWorker:
            # Celery's worker state (celery.worker.state) is per process: one worker at a time.
            if started:
                raise RuntimeError("one in-process worker per test")
            # A worker that overran its shutdown timeout leaves this set, which would stop
            # the next one as soon as it starts.
            state.should_terminate = None
            stack.callback(_check_detached, app)  # once the worker below has stopped
            # Celery's embedded worker would run a worker process's logging setup here: empty
            # the root logger's handlers (pytest's capture among them) and set its level, make
            # 'always' the action for Celery's deprecation warnings (this suite makes every
            # warning an error), route warnings to logging, and write its settings into
            # os.environ, all for the rest of the session. Skipped: this process's logging is
            # pytest's, and the worker's records go to its capture.
            #
            # The consumer's connection, made while the worker starts, gets a short BRPOP
            # timeout: closing it waits for the BRPOP in flight (kombu reads its reply so that
            # no message is lost), a whole second with the default. Nothing else changes.
            fast_close = {"polling_interval": POLLING_INTERVAL}
            with (
                mock.patch.object(app.log, "setup"),
                mock.patch.dict(app.conf.broker_transport_options, fast_close),
            ):
                worker = stack.enter_context(
                    embedded.start_worker(
                        app,
                        pool="solo",
                        concurrency=1,
                        hostname=f"{name}@inprocess",
                        perform_ping_check=False,
                        shutdown_timeout=SHUTDOWN_TIMEOUT,
                        WorkController=EmbeddedWorker,
                    )
                )
            started.append(worker)
            stack.callback(_stop_now, worker)
            _check_vox_flow_runs(worker)
            return worker

        yield start
