"""``vox-flow worker``: a supervisor of one single-process Celery worker per core.

A default ``celery worker`` (prefork) runs every message through its parent process, which
saturates one core at about 1,000 no-op tasks/s on a 2-core machine. Here each core gets its
own ``celery worker -P solo`` process, which consumes, runs and acknowledges by itself; the
supervisor, outside them, keeps what prefork's parent gave:

* crash isolation: a child that dies (segfault, OOM, SIGKILL) is restarted, the run it was in
  is settled as a lost attempt (requeued, or dead-lettered once its attempts are used up) and
  the messages it held go back to their queues at once;
* hard time limits: a run past its limit has its child killed (SIGKILL) and is settled the same
  way, with ``TimeLimitExceeded``.

The child tells the supervisor what it runs through a shared-memory run slot (runslot.py).
Trade-offs: soft time limits are not enforced (solo has no pool to raise them); a child runs
one task at a time, so per-node concurrency is the number of processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vox_flow.worker.runslot import Run, RunSlot
from vox_flow.worker.settle import settle

if TYPE_CHECKING:
    from types import FrameType

    from vox_flow.application import VoxFlow

log = logging.getLogger("vox_flow.worker.supervisor")

_POLL = 0.1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the supervisor dies (Linux)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One supervised worker process and its run slot."""

    index: int
    name: str
    args: list[str]
    slot: RunSlot
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    fast_deaths: int = 0
    not_before: float = 0.0
    killed_for: Run | None = field(default=None)

    def start(self) -> None:
        self.slot.write(Run())
        self.process = subprocess.Popen(self.args, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        self.killed_for = None
        log.info("started %s (pid %d)", self.name, self.process.pid)


class Supervisor:
    """Runs ``processes`` solo-pool workers of ``app_path`` and keeps them running."""

    def __init__(
        self,
        app: VoxFlow,
        *,
        processes: int,
        app_path: str = "vox_flow.app",
        queues: str | None = None,
        loglevel: str = "info",
        extra: list[str] | None = None,
    ) -> None:
        self.app = app
        self.node = app.settings.node_id
        self._dir = Path(tempfile.mkdtemp(prefix="vox-flow-worker-"))
        self._stopping = False
        self.children = [
            self._child(i, app_path, queues, loglevel, extra or []) for i in range(processes)
        ]

    def _child(
        self, index: int, app_path: str, queues: str | None, loglevel: str, extra: list[str]
    ) -> Child:
        name = f"vf{index + 1}@{self.node}"
        slot_path = self._dir / f"{index}.slot"
        args = [
            sys.executable, "-m", "celery", "-A", app_path, "worker",
            "-P", "solo", "-c", "1", "-n", name, "-l", loglevel,
            "--without-mingle", "--without-gossip", "--vf-run-slot", str(slot_path),
        ]  # fmt: skip
        if queues:
            args += ["-Q", queues]
        return Child(index, name, args + extra, RunSlot(slot_path, create=True))

    def run(self) -> int:
        """Start every child and supervise until SIGTERM/SIGINT; returns the exit code."""
        self.app.loader.import_default_modules()  # retry policies, to settle lost runs
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            child.start()
        try:
            while not self._stopping:
                for child in self.children:
                    self._check(child)
                time.sleep(_POLL)
        finally:
            self._shutdown()
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _check(self, child: Child) -> None:
        if child.process is None:
            if time.monotonic() >= child.not_before:
                child.start()
            return
        code = child.process.poll()
        if code is None:
            run = child.slot.read()
            if run.task_id and run.limit and time.time() - run.started > run.limit:
                log.error(
                    "%s: %s[%s] passed its hard time limit (%ss); killing the process",
                    child.name,
                    run.name,
                    run.task_id,
                    run.limit,
                )
                child.killed_for = run
                child.process.kill()
            return
        self._settle(child, code)
        lived = time.monotonic() - child.started_at
        child.fast_deaths = child.fast_deaths + 1 if lived < 2 else 0
        child.not_before = time.monotonic() + min(10.0, 0.25 * 2**child.fast_deaths) * (
            child.fast_deaths > 0
        )
        child.process = None

    def _settle(self, child: Child, code: int) -> None:
        """Account for what a dead child was running and holding."""
        run = child.killed_for or child.slot.read()
        if code < 0:
            how = f"worker process killed by {signal.Signals(-code).name}"
        else:
            how = f"worker process exited with code {code}"
        if run.task_id:
            timed_out = child.killed_for is not None
            outcome = settle(
                self.app,
                run.tag,
                lost=True,
                error_type="TimeLimitExceeded" if timed_out else "WorkerLostError",
                error_message=f"hard time limit ({run.limit}s)" if timed_out else how,
                node=child.name,
                started_at=datetime.fromtimestamp(run.started, UTC),
            )
            log.error("%s: %s; %s[%s] %s", child.name, how, run.name, run.task_id, outcome)
        elif code != 0:
            log.error("%s: %s", child.name, how)
        for tag in run.held:
            if tag != run.tag:  # held, never started: no attempt, and no take-back either
                settle(self.app, tag, lost=False, count_takeback=False)
        child.slot.write(Run())

    def _shutdown(self) -> None:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.terminate()  # Celery's warm shutdown: finish, then give back
        deadline = time.monotonic() + 30
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                code = child.process.wait()
                self._settle(child, code)
        for child in self.children:
            child.slot.close()
