"""One worker runtime per (process, app), and the one keeper thread that keeps it alive.

A process that runs an app's tasks holds, for that app: its Redis stores (attempts,
idempotency, dead letters), the idempotency claims of its runs in progress, the messages its
consumer holds (attached by the lease step, when this process consumes) and, in a
``vox-flow worker`` child, its run slot. One daemon thread per runtime, the *keeper*, does the
background work, each step at its own interval:

* ``attempt flush``: write the buffered records of successful attempts (every
  ``FLUSH_SECONDS``);
* ``claim renewal``: extend the claims of runs in progress (every ``lease_renew_seconds``), on
  this app's Redis: a process with two apps keeps each app's claims on that app's server;
* ``lease renewal``: renew the leases of the held messages and take back expired ones
  (lease.py), when a consumer is attached;
* ``liveness``: while a run blocks a solo consumer's event loop, send that loop's task events
  and worker heartbeats in its place (``vox_flow._celery.liveness``), when that consumer is
  attached (every ``LIVENESS_TICK``: a run shows STARTED within it).

A step that raises is logged with its traceback (then at most once per ``REPORT_EVERY`` while
it keeps failing) and runs again at its next turn; the other steps go on.

A runtime is found by its app in a module-level weak mapping, never by an attribute patched
onto the app, and holds its app weakly. A forked child resets every runtime once
(``os.register_at_fork``): it keeps none of its parent's claims, messages, slot or buffered
records, and builds its clients and keeper thread again when first used.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vox_flow.attempts import FLUSH_SECONDS, AttemptLog
from vox_flow.deadletters.store import DeadLetterStore
from vox_flow.idempotency import IdempotencyStore
from vox_flow.worker.runslot import SlotWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from pathlib import Path

    from vox_flow._celery.liveness import Liveness
    from vox_flow.application import VoxFlow
    from vox_flow.worker.lease import LeaseKeeper

log = logging.getLogger(__name__)

REPORT_EVERY = 60.0  # seconds between log lines of a step that keeps failing
# Seconds between looks at a blocked loop: a run's task-started event and first heartbeat
# leave within this of its start. Each look is a few attribute reads when nothing runs.
LIVENESS_TICK = 0.25


@dataclass
class Step:
    """One periodic piece of a keeper's work: ``run`` every ``every`` seconds."""

    name: str
    every: float
    run: Callable[[], object]
    due: float = 0.0
    failures: int = 0  # in a row
    reported_at: float | None = None  # when the current run of failures was last logged


class Keeper:
    """Runs its steps, each at its own interval, in one daemon thread."""

    def __init__(
        self,
        steps: Iterable[Step],
        *,
        name: str = "vf-keeper",
        clock: Callable[[], float] = time.monotonic,
        report_every: float = REPORT_EVERY,
    ) -> None:
        self.steps = list(steps)
        self.clock = clock
        self.report_every = report_every
        now = clock()
        for step in self.steps:
            step.due = now + step.every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def run_due(self) -> float:
        """Run, in order, every step that is due; returns the seconds until the next is due."""
        now = self.clock()
        for step in self.steps:
            if now >= step.due:
                step.due = now + step.every
                self._run(step, now)
        return self.until_due()

    def until_due(self) -> float:
        """Seconds until the next step is due (0 when one is overdue)."""
        due = min((step.due for step in self.steps), default=self.clock() + 1.0)
        return max(0.0, due - self.clock())

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop; wait up to ``timeout`` for it (unless called from it)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self, step: Step, now: float) -> None:
        try:
            step.run()
        except Exception:
            step.failures += 1
            # Logged, then quiet for a while: a Redis outage fails every step every round.
            if step.reported_at is None or now - step.reported_at >= self.report_every:
                step.reported_at = now
                log.exception(
                    "%s failed (%d time(s) in a row); trying again every %gs",
                    step.name,
                    step.failures,
                    step.every,
                )
            return
        if step.failures:
            log.warning("%s works again after %d failure(s)", step.name, step.failures)
        step.failures, step.reported_at = 0, None

    def _loop(self) -> None:
        delay = self.until_due()
        while not self._stop.wait(delay):
            delay = self.run_due()


@dataclass(frozen=True)
class _Stores:
    attempts: AttemptLog
    idempotency: IdempotencyStore
    dead_letters: DeadLetterStore


class WorkerRuntime:
    """What this process keeps for running one app's tasks (see the module docstring)."""

    _lock: threading.Lock
    _stores: _Stores | None
    _claims: dict[str, str]  # idempotency key -> token of the run holding its claim
    _held: Mapping[str, Any] | None
    _leases: LeaseKeeper | None
    _liveness: Liveness | None
    _slot: SlotWriter | None
    _keeper: Keeper | None

    def __init__(self, app: VoxFlow) -> None:
        # Weak: the keeper thread holds this runtime, and must not keep a dropped app alive.
        self._app = weakref.ref(app, self._app_gone)
        self._reset()

    @classmethod
    def of(cls, app: VoxFlow) -> WorkerRuntime:
        """This process's runtime of ``app``: always the same object (built on first use; its
        keeper thread starts with :meth:`start`)."""
        runtime = _runtimes.get(app)
        if runtime is None:
            with _registry_lock:
                runtime = _runtimes.get(app)
                if runtime is None:
                    _register_process_hooks()
                    runtime = _runtimes[app] = cls(app)
        return runtime

    @property
    def app(self) -> VoxFlow:
        app = self._app()
        if app is None:
            raise ReferenceError("this worker runtime's app is gone")
        return app

    @property
    def attempts(self) -> AttemptLog:
        return self._stores_().attempts

    @property
    def idempotency(self) -> IdempotencyStore:
        return self._stores_().idempotency

    @property
    def dead_letters(self) -> DeadLetterStore:
        return self._stores_().dead_letters

    def start(self) -> None:
        """Start this runtime's keeper thread, once per process (cheap when it runs)."""
        if self._keeper is not None:
            return
        with self._lock:
            if self._keeper is None:
                keeper = Keeper(self.steps(), name="vf-keeper")
                keeper.start()
                self._keeper = keeper

    @property
    def leases(self) -> LeaseKeeper | None:
        """The lease keeper the keeper thread runs, while a consumer is attached."""
        return self._leases

    @property
    def alive(self) -> bool:
        """Whether this runtime's keeper thread runs in this process."""
        keeper = self._keeper
        return keeper is not None and keeper.alive

    def stop(self) -> None:
        """Stop the keeper thread and write the buffered attempt records now."""
        with self._lock:
            keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.stop()
        self._flush_attempts()

    @contextmanager
    def running(self, key: str | None, token: str) -> Iterator[None]:
        """While inside, the claim on ``key`` (if any) held by run ``token`` is renewed."""
        if key is None:
            yield
            return
        self.start()
        with self._lock:
            self._claims[key] = token
        try:
            yield
        finally:
            with self._lock:
                if self._claims.get(key) == token:
                    del self._claims[key]

    def held_claims(self) -> dict[str, str]:
        """The claims this process renews now (idempotency key -> run token)."""
        with self._lock:
            return dict(self._claims)

    def attach(self, held: Mapping[str, Any], leases: LeaseKeeper) -> None:
        """Until :meth:`detach`: ``held`` is kombu's live mapping of the messages this
        process's consumer holds (the run slot reports them), and the keeper runs ``leases``
        (which renews them and takes back expired ones) every ``lease_renew_seconds``."""
        self._held = held
        self._leases = leases
        self.start()

    def detach(self) -> None:
        """The consumer stopped: no more lease renewal or reaping from this process."""
        self._leases = None
        self._held = None

    def attach_liveness(self, liveness: Liveness) -> None:
        """Until :meth:`detach_liveness`: the keeper runs ``liveness`` (which sends a solo
        consumer's task events and heartbeats while a run blocks its loop)."""
        self._liveness = liveness
        self.start()

    def detach_liveness(self) -> None:
        """That consumer stopped: nothing more is sent for it."""
        self._liveness = None

    def open_slot(self, path: Path) -> None:
        """Report this process's runs in the run slot at ``path`` (a supervised child)."""
        self._slot = SlotWriter(path, self._held_messages)

    def run_started(self, task_id: str, name: str, started: float, limit: float) -> None:
        """A run began: tell the run slot, if this process has one."""
        slot = self._slot
        if slot is not None:
            slot.started(task_id, name, started, limit)

    def run_finished(self) -> None:
        """The run ended: tell the run slot, if this process has one."""
        slot = self._slot
        if slot is not None:
            slot.finished()

    def _reset(self) -> None:
        """Hold nothing: a new runtime, or a forked child's copy of its parent's."""
        self._lock = threading.Lock()  # new: another thread may have held the old at a fork
        self._stores = None
        self._claims = {}
        self._held = None
        self._leases = None
        self._liveness = None
        self._slot = None
        self._keeper = None

    def _stores_(self) -> _Stores:
        stores = self._stores
        if stores is None:
            with self._lock:
                if self._stores is None:
                    app = self.app
                    settings = app.settings
                    self._stores = _Stores(
                        AttemptLog(app.redis, settings.attempts_ttl_seconds),
                        IdempotencyStore(app.redis, settings.idempotency_ttl_seconds),
                        DeadLetterStore(app.redis),
                    )
                stores = self._stores
        return stores

    def steps(self) -> list[Step]:
        """The keeper thread's work for this runtime, in the order it runs each round."""
        settings = self.app.settings
        return [
            Step("attempt flush", FLUSH_SECONDS, self._flush_attempts),
            Step("claim renewal", settings.lease_renew_seconds, self._renew_claims),
            Step("lease renewal", settings.lease_renew_seconds, self._keep_leases),
            Step("liveness", LIVENESS_TICK, self._keep_liveness),
        ]

    def _flush_attempts(self) -> None:
        stores = self._stores
        if stores is not None:
            stores.attempts.flush()

    def _renew_claims(self) -> None:
        claims = self.held_claims()
        if claims:
            self.idempotency.renew(claims, self.app.settings.lease_seconds)

    def _keep_leases(self) -> None:
        leases = self._leases
        if leases is not None:
            leases.keep()

    def _keep_liveness(self) -> None:
        liveness = self._liveness
        if liveness is not None:
            liveness.keep()

    def _held_messages(self) -> Mapping[str, Any]:
        return self._held if self._held is not None else {}

    def _app_gone(self, _: object) -> None:
        keeper = self._keeper
        if keeper is not None:
            keeper.stop(timeout=0)  # may run in the keeper thread itself: never join here


_runtimes: weakref.WeakKeyDictionary[VoxFlow, WorkerRuntime] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()
_hooks_registered = False


def _register_process_hooks() -> None:
    """Once per process (a forked child inherits them): the fork reset and the exit flush."""
    global _hooks_registered
    if not _hooks_registered:
        _hooks_registered = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(_flush_all)


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for runtime in list(_runtimes.values()):
        runtime._reset()


def _flush_all() -> None:
    """At exit: write every runtime's buffered attempt records (a daemon keeper is cut off)."""
    for runtime in list(_runtimes.values()):
        try:
            runtime._flush_attempts()
        except Exception:
            log.exception("could not write buffered attempt records at exit")
