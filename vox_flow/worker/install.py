"""The worker side of an app, attached in one place by ``create_app``.

``install`` gives ``celery -A vox_flow.app worker`` and ``vox-flow worker`` the same behaviour:
typed tasks run through :func:`vox_flow.worker.execution.execute`; a worker process starts
telemetry (an entry point: nothing else does), attaches its consumer's messages to the
worker runtime (whose keeper renews their leases), keeps a solo consumer live to monitors
while a run blocks its loop (``vox_flow._celery.liveness``), and (for a supervised child) keeps
its run slot. Nothing here runs until a worker starts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from celery import bootsteps, signals

from vox_flow import telemetry
from vox_flow._celery.liveness import Liveness
from vox_flow.worker.execution import VoxTask, execute
from vox_flow.worker.lease import LeaseStep
from vox_flow.worker.runtime import WorkerRuntime

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow


class WorkerHooks:
    """Celery signal hooks of one worker process; every hook is a no-op by default."""

    def on_task_prerun(self, task: Any, task_id: str) -> None:
        """A task is about to run in this process."""

    def on_task_postrun(self, task: Any, task_id: str) -> None:
        """A task finished (any outcome) in this process."""

    def connect(self) -> None:
        signals.task_prerun.connect(self._prerun, weak=False)
        signals.task_postrun.connect(self._postrun, weak=False)

    def _prerun(self, task_id: str, task: Any, **_: Any) -> None:
        self.on_task_prerun(task, task_id)

    def _postrun(self, task_id: str, task: Any, **_: Any) -> None:
        self.on_task_postrun(task, task_id)


class RunSlotHooks(WorkerHooks):
    """Keeps a supervised child's run slot current (see runslot.py), for its app's tasks."""

    def __init__(self, runtime: WorkerRuntime, default_limit: float) -> None:
        self.runtime = runtime
        self.default_limit = default_limit

    def on_task_prerun(self, task: Any, task_id: str) -> None:
        if task.app is not self.runtime.app:
            return
        request = task.request
        hard = (request.timelimit or (None, None))[0] or task.time_limit or self.default_limit
        self.runtime.run_started(task_id, task.name, time.time(), float(hard))

    def on_task_postrun(self, task: Any, task_id: str) -> None:
        if task.app is self.runtime.app:
            self.runtime.run_finished()


class LivenessStep(bootsteps.StartStopStep):
    """Consumer bootstep: while a run blocks a solo consumer's loop, the keeper thread sends
    its task events and its worker's heartbeats (so the run shows STARTED as it begins, and
    the worker stays online)."""

    requires = ("celery.worker.consumer.heart:Heart",)  # its interval, once Heart started

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.liveness: Liveness | None = None

    def start(self, parent: Any) -> None:
        self.liveness = Liveness.of_consumer(parent)
        if self.liveness is not None:  # None: a pool that leaves the loop free
            WorkerRuntime.of(parent.app).attach_liveness(self.liveness)

    def stop(self, parent: Any) -> None:
        liveness, self.liveness = self.liveness, None
        if liveness is not None:
            WorkerRuntime.of(parent.app).detach_liveness()
            liveness.close()

    shutdown = stop


class RunSlotStep(bootsteps.Step):
    """Worker bootstep: with ``--vf-run-slot FILE`` (set by ``vox-flow worker``), report runs."""

    def __init__(self, worker: Any, vf_run_slot: str | None = None, **options: Any) -> None:
        super().__init__(worker, **options)
        if vf_run_slot:
            app: VoxFlow = worker.app
            runtime = WorkerRuntime.of(app)
            runtime.open_slot(Path(vf_run_slot))
            RunSlotHooks(runtime, float(app.conf.task_time_limit or 0)).connect()


class TelemetryStep(bootsteps.Step):
    """Worker bootstep: the worker process is an entry point, so it starts telemetry (before
    a prefork pool forks, so every child inherits it)."""

    def __init__(self, worker: Any, **options: Any) -> None:
        super().__init__(worker, **options)
        telemetry.init(worker.app.settings)


def install(app: VoxFlow) -> None:
    """Make ``app`` run typed tasks, and attach vox_flow's worker options and bootsteps."""
    app.typed_task_base = VoxTask
    app.run_typed = execute
    app.steps["worker"].add(TelemetryStep)
    app.user_options["worker"].add(
        click.Option(["--vf-run-slot"], default=None, help="Internal: set by vox-flow worker.")
    )
    app.steps["worker"].add(RunSlotStep)
    app.steps["consumer"].add(LeaseStep)
    app.steps["consumer"].add(LivenessStep)
