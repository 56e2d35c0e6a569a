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

Broker outages: what a dead child left (its lost run, the messages it held) is kept as
*unsettled* and settled once the broker answers, tried again with backoff at each turn of the
loop while the other children go on being supervised. The dead child is restarted meanwhile,
as it would be otherwise: what it left is in ``unacked``, out of every queue, so the new
process cannot run it before it is settled, and a restart that waited on the broker would
leave the node with fewer processes for no gain. Nothing raised in the loop stops the
supervisor: it is logged, and the loop goes on; a shutdown with the broker away logs what it
leaves unsettled (the leases of those messages lapse, and live workers take them back).

Names: the children of one supervisor are ``vf<i>-<supervisor pid>@<node>`` (``i`` from 1),
so two ``vox-flow worker`` on one host never share a name (Flower, attempt records); a child
keeps its name across restarts. Their run slots live in ``vox-flow-worker-<pid>-*`` in the
temporary directory, removed on exit; a supervisor starting removes those whose pid is gone
(left by a supervisor that was SIGKILLed).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from kombu.exceptions import OperationalError

from vox_flow._celery.layout import layout
from vox_flow.worker.runslot import Run, RunSlot
from vox_flow.worker.settle import settle

if TYPE_CHECKING:
    from types import FrameType

    from vox_flow.application import VoxFlow

log = logging.getLogger("vox_flow.worker.supervisor")

_POLL = 0.1
# Settling what a dead child left, while the broker does not answer: the first wait, doubling
# up to the cap; a warning at most every REPORT_EVERY seconds.
SETTLE_BACKOFF_FIRST, SETTLE_BACKOFF_MAX = 0.1, 2.0
REPORT_EVERY = 5.0
DIR_PREFIX = "vox-flow-worker-"
# What a broker that does not answer raises: redis-py's errors, and kombu's (reading the
# transport's layout, which settle needs, over a kombu connection).
BROKER_ERRORS = (redis.RedisError, OperationalError, OSError)


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


@dataclass(frozen=True)
class Unsettled:
    """A message a dead child left in ``unacked``, to take back (settle.py)."""

    child: str  # the child's name
    tag: str
    run: Run | None = None  # the run that died with the child; None: only held
    error_type: str = ""
    error_message: str = ""

    def settle(self, app: VoxFlow) -> str:
        """Take it back now; returns settle's outcome (raises what settle raises)."""
        if self.run is None:  # held, never started: no attempt, and no take-back either
            return settle(app, self.tag, lost=False, count_takeback=False)
        return settle(
            app,
            self.tag,
            lost=True,
            error_type=self.error_type,
            error_message=self.error_message,
            node=self.child,
            started_at=datetime.fromtimestamp(self.run.started, UTC),
        )


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
        self.pid = os.getpid()
        remove_stale_dirs()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{self.pid}-"))
        self._stopping = False
        self.unsettled: list[Unsettled] = []
        self._settle_at = 0.0  # when to try the unsettled again (monotonic)
        self._settle_delay = SETTLE_BACKOFF_FIRST
        self._reported: dict[str, float] = {}  # what -> when a failure of it was last logged
        self.children = [
            self._child(i, app_path, queues, loglevel, extra or []) for i in range(processes)
        ]

    def _child(
        self, index: int, app_path: str, queues: str | None, loglevel: str, extra: list[str]
    ) -> Child:
        name = f"vf{index + 1}-{self.pid}@{self.node}"
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
        try:
            self.app.loader.import_default_modules()  # retry policies, to settle lost runs
            # Read now, while the broker answers (`vox-flow worker` checked it): read later,
            # through a kombu connection that retries for seconds, it would stall the loop.
            self._guarded("reading the broker's layout", layout, self.app)
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            while not self._stopping:
                self.turn()
                time.sleep(_POLL)
        finally:
            self._shutdown()
        return 0

    def turn(self) -> None:
        """One turn of the loop: look at every child, then settle what dead ones left. Raises
        nothing: a failure is logged (then at most every REPORT_EVERY while it repeats)."""
        for child in self.children:
            self._guarded(f"supervising {child.name}", self._check, child)
        self._guarded("settling what dead worker processes left", self.settle_unsettled)

    def _guarded(self, what: str, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except Exception:
            if self._report(what):
                log.exception("%s failed; going on (the supervisor keeps running)", what)

    def _report(self, what: str) -> bool:
        """Whether to log a failure of ``what`` now (the first, then every REPORT_EVERY)."""
        now = time.monotonic()
        if now - self._reported.get(what, -REPORT_EVERY) < REPORT_EVERY:
            return False
        self._reported[what] = now
        return True

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
        child.process = None  # first: whatever happens below, the child is restarted
        lived = time.monotonic() - child.started_at
        child.fast_deaths = child.fast_deaths + 1 if lived < 2 else 0
        child.not_before = time.monotonic() + min(10.0, 0.25 * 2**child.fast_deaths) * (
            child.fast_deaths > 0
        )
        self._left_by(child, code)
        self.settle_unsettled(now=True)

    def _left_by(self, child: Child, code: int) -> None:
        """Note what a dead child was running and holding, to settle (see settle_unsettled)."""
        run = child.killed_for or child.slot.read()
        how = _how(code)
        if run.task_id:
            timed_out = child.killed_for is not None
            self.unsettled.append(
                Unsettled(
                    child.name,
                    run.tag,
                    run,
                    error_type="TimeLimitExceeded" if timed_out else "WorkerLostError",
                    error_message=f"hard time limit ({run.limit}s)" if timed_out else how,
                )
            )
            log.error("%s: %s while running %s[%s]", child.name, how, run.name, run.task_id)
        elif code != 0:
            log.error("%s: %s", child.name, how)
        self.unsettled += [Unsettled(child.name, tag) for tag in run.held if tag != run.tag]
        child.killed_for = None

    def settle_unsettled(self, now: bool = False) -> None:
        """Settle what dead children left, oldest first, unless waiting for the broker (its
        backoff), or ``now``. A broker error keeps the rest for a later turn; any other error
        drops that message (logged): the lease reaper, or kombu, delivers it again."""
        if not self.unsettled or (not now and time.monotonic() < self._settle_at):
            return
        while self.unsettled:
            item = self.unsettled[0]
            try:
                outcome = item.settle(self.app)
            except BROKER_ERRORS as exc:
                self._settle_at = time.monotonic() + self._settle_delay
                if self._report("broker"):
                    log.warning(
                        "the broker does not answer (%s: %s): %d message(s) left by dead worker "
                        "processes wait to be settled; trying again every %gs at most",
                        type(exc).__name__,
                        exc,
                        len(self.unsettled),
                        SETTLE_BACKOFF_MAX,
                    )
                self._settle_delay = min(self._settle_delay * 2, SETTLE_BACKOFF_MAX)
                return
            except Exception:
                log.exception("%s: cannot settle message %s; leaving it", item.child, item.tag)
                outcome = "not settled"
            self.unsettled.pop(0)
            if item.run is not None:
                run = item.run
                log.warning("%s: %s[%s] %s", item.child, run.name, run.task_id, outcome)
            if self._settle_delay > SETTLE_BACKOFF_FIRST and not self.unsettled:
                log.warning("the broker answers again: settled what dead processes left")
        self._settle_delay = SETTLE_BACKOFF_FIRST
        self._reported.pop("broker", None)

    def _shutdown(self) -> None:
        """Stop every child (warm, then SIGKILL after 30 s), settle what they left, remove
        the run slots. Raises nothing: the broker may be away."""
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            with contextlib.suppress(OSError):
                child.process.terminate()  # Celery's warm shutdown: finish, then give back
        deadline = time.monotonic() + 30
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        for child in self.children:  # killed above, or died since the loop last looked
            code = child.process.poll() if child.process is not None else 0
            if code:
                self._guarded(f"stopping {child.name}", self._left_by, child, code)
        self._guarded("settling what dead worker processes left", self.settle_unsettled, True)
        if self.unsettled:
            log.error(
                "shutting down with %d message(s) of dead worker processes unsettled (the "
                "broker does not answer): their leases lapse, and live workers take them back",
                len(self.unsettled),
            )
        for child in self.children:
            with contextlib.suppress(Exception):
                child.slot.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _how(code: int) -> str:
    """How a child process ended, from its exit code (negative: the signal)."""
    if code >= 0:
        return f"worker process exited with code {code}"
    try:
        return f"worker process killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"worker process killed by signal {-code}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_dirs(root: Path | None = None) -> list[Path]:
    """Remove the run-slot directories of supervisors that are gone (SIGKILLed: no clean
    exit removed them) from ``root`` (the temporary directory); returns those removed.
    A directory whose pid is alive is kept (a live supervisor's, or a reused pid's)."""
    root = root or Path(tempfile.gettempdir())
    removed = []
    pattern = re.compile(rf"{re.escape(DIR_PREFIX)}(\d+)-")
    for path in root.glob(f"{DIR_PREFIX}*"):
        match = pattern.match(path.name)
        if match is None or not path.is_dir() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed
