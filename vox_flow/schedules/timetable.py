"""The scheduler's loop body: lead or follow, and as leader make every due fire exactly once.

``Timetable.tick()`` is all a beat loop calls. It keeps the loaded schedules in a heap by
due instant, so a tick with nothing due costs a lock check and one Redis GET whatever the
number of schedules. The wall clock is injected (``clock``) so tests can move it.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis

from vox_flow.contracts.schedule import OverlapPolicy, ScheduleDefinition
from vox_flow.contracts.task import TaskStatus
from vox_flow.errors import VoxFlowError
from vox_flow.schedules import policy
from vox_flow.schedules.cron import Cron, fire_key, utc_now
from vox_flow.schedules.leader import LeaderLock
from vox_flow.schedules.store import ClaimMode, ScheduleStore
from vox_flow.submit import submit

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow
    from vox_flow.handle import TaskHandle
    from vox_flow.schedules.loader import Loaded

log = logging.getLogger("vox_flow.schedules")

Clock = Callable[[], datetime]
_FINISHED = {TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value, TaskStatus.REVOKED.value}


@dataclass
class Entry:
    """One loaded schedule and what the leader knows of its state."""

    spec: ScheduleDefinition
    cron: Cron
    last_fire: datetime | None = None
    last_task_id: str | None = None
    buffered: datetime | None = None
    next_fire: datetime | None = None


class Timetable:
    """Loaded schedules plus the leader lock; ``tick`` fires what is due."""

    def __init__(
        self,
        app: VoxFlow,
        loaded: Loaded,
        *,
        clock: Clock = utc_now,
        lock: LeaderLock | None = None,
    ) -> None:
        settings = app.settings
        self.app = app
        self.clock = clock
        self.tick_seconds = settings.beat_tick_seconds
        self.grace = timedelta(seconds=settings.beat_misfire_grace_seconds)
        self.lock = lock or LeaderLock(app.redis, settings.beat_leader_ttl_seconds)
        self.store = ScheduleStore(app.redis)
        self.entries: dict[str, Entry] = {}
        self.heap: list[tuple[datetime, str, datetime]] = []  # (due, name, fire)
        self.waiting: set[str] = set()  # schedules holding a buffered fire
        self.generation = self.store.generation()
        self.load(loaded)

    # --- definitions ---------------------------------------------------------------------
    def load(self, loaded: Loaded) -> None:
        """Replace the definitions (a reload); as leader, pick their state up again.

        The bad files of ``loaded`` are logged (file, schedule, field, reason) and left out;
        the good ones fire.
        """
        for error in loaded.errors:
            log.error("schedule file not loaded: %s", error)
        self.entries = {
            name: Entry(spec, Cron(spec.cron, spec.timezone))
            for name, spec in loaded.definitions.items()
            if spec.enabled
        }
        self.heap = []
        if self.lock.token is not None:
            self._reconcile()

    def reload_if_asked(self, reload: Callable[[], Loaded]) -> bool:
        """Reload with ``reload()`` when the shared generation counter moved.

        A reload that fails as a whole (the directory cannot be read) keeps the definitions
        loaded before, logged; a bad file only leaves that file out (``load``).
        """
        try:
            generation = self.store.generation()
        except (redis.ConnectionError, redis.TimeoutError):
            return False  # the tick that follows finds the broker gone and steps down
        if generation == self.generation:
            return False
        self.generation = generation
        try:
            loaded = reload()
        except OSError as exc:
            log.error(
                "schedule reload %d failed, the %d schedules loaded before still fire: %s",
                generation,
                len(self.entries),
                exc,
            )
            return False
        try:
            self.load(loaded)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._step_down(f"broker unreachable while reloading: {exc}")
        return True

    # --- the loop body -------------------------------------------------------------------
    def tick(self) -> float:
        """Lead or follow for one step; returns seconds until the next step is wanted."""
        try:
            if self.lock.token is None:
                if self.lock.try_acquire() is None:
                    return self.tick_seconds
                log.info("leading schedules with fencing token %s", self.lock.token)
                self._reconcile()
            elif not self.lock.keep():
                self._step_down("leader lock lost")
                return self.tick_seconds
            return self._fire_due()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._step_down(f"broker unreachable: {exc}")
            return self.tick_seconds

    def close(self) -> None:
        """Give up leadership (another replica takes over at once)."""
        with contextlib.suppress(redis.RedisError):
            self.lock.release()

    def _step_down(self, why: str) -> None:
        if self.lock.token is not None:
            log.warning("stepping down as schedule leader: %s", why)
        self.lock.token = None
        self.heap = []
        self.waiting = set()

    def _push(self, entry: Entry, after: datetime) -> None:
        spec = entry.spec
        fire = entry.cron.next_after(after)
        _, end = policy.window(spec)
        if fire is None or (end is not None and fire > end):
            entry.next_fire = None
            return
        start, _ = policy.window(spec)
        if start is not None and fire < start:
            fire = entry.cron.next_after(start - timedelta(microseconds=1))
            if fire is None:
                entry.next_fire = None
                return
        entry.next_fire = fire
        due = fire + timedelta(seconds=policy.jitter(spec.name, fire, spec.jitter_seconds))
        heapq.heappush(self.heap, (due, spec.name, fire))

    def _reconcile(self) -> None:
        """On taking the lead: read every state, finish a dead leader's pending fires."""
        now = self.clock()
        states = self.store.states(self.entries)
        marks: dict[str, datetime] = {}
        self.heap = []
        self.waiting = set()
        for name, entry in self.entries.items():
            state = states[name]
            entry.last_task_id = state.last_task_id
            entry.buffered = state.buffered_fire
            if entry.buffered is not None:
                self.waiting.add(name)
            entry.last_fire = state.last_fire
            if entry.last_fire is None:
                # Never fired: nothing before now counts as missed (fires up to now are
                # marked dealt with, so a later leader agrees).
                entry.last_fire = now.replace(microsecond=now.microsecond // 1000 * 1000)
                marks[name] = entry.last_fire
            if state.pending_fire is not None and self.lock.token is not None:
                previous = entry.last_task_id
                cancel = entry.spec.overlap is OverlapPolicy.CANCEL_PREVIOUS
                if cancel and previous and self._running(entry):
                    # The dead leader may have died after its claim but before its revoke;
                    # revoking a run twice is harmless.
                    self.app.control.revoke(previous, terminate=True)
                self._enqueue(entry, state.pending_fire)
            self._push(entry, entry.last_fire)
        if marks:
            self.store.baseline(marks)

    def _fire_due(self) -> float:
        token = self.lock.token
        now = self.clock()
        while self.heap and self.heap[0][0] <= now and token is not None:
            _, name, fire = heapq.heappop(self.heap)
            entry = self.entries.get(name)
            if entry is None or entry.next_fire != fire:
                continue  # dropped by a reload
            if not self.lock.leading():
                self._step_down("leader lock expired before the fire")
                return self.tick_seconds
            self._fire_entry(entry, now)
            self._push(entry, max(now, entry.last_fire or now))
            token = self.lock.token
        self._release_buffered()
        if not self.heap:
            return self.tick_seconds
        wait = (self.heap[0][0] - self.clock()).total_seconds()
        return max(0.0, min(self.tick_seconds, wait))

    def _fire_entry(self, entry: Entry, now: datetime) -> None:
        assert entry.last_fire is not None
        grace = self.grace + timedelta(seconds=entry.spec.jitter_seconds)
        plan = policy.plan(entry.cron, entry.spec, entry.last_fire, now, grace)
        if plan.dropped:
            log.warning(
                "schedule %s: %d missed fires dropped (%s)",
                entry.spec.name,
                plan.dropped,
                entry.spec.missed_run,
            )
        for fire in plan.fires:
            if self.lock.token is None:
                return
            self._one_fire(entry, fire)
        if plan.dealt_with is not None and plan.dealt_with > (entry.last_fire or plan.dealt_with):
            # Fires the policy dropped still count as dealt with, so none comes back later.
            self._claim(entry, plan.dealt_with, "skip")

    def _running(self, entry: Entry) -> bool:
        task_id = entry.last_task_id
        if not task_id or entry.spec.overlap is OverlapPolicy.ALLOW:
            return False
        if entry.last_fire is not None:
            age = (self.clock() - entry.last_fire).total_seconds()
            if age > self.app.settings.result_ttl_seconds:
                return False  # its result expired: PENDING would mean "unknown", not running
        return str(self.app.AsyncResult(task_id).state) not in _FINISHED

    def _claim(self, entry: Entry, fire: datetime, mode: ClaimMode) -> bool:
        """Claim under the token; True when the fire should be enqueued now."""
        token = self.lock.token
        if token is None:
            return False
        result = self.store.claim(token, entry.spec.name, fire, mode)
        if result == "fenced":
            self._step_down("a newer leader holds the fence")
            return False
        if mode != "release":
            entry.last_fire = max(entry.last_fire or fire, fire)
        if result == "buffered":
            entry.buffered = fire
            self.waiting.add(entry.spec.name)
        return result == "ok"

    def _one_fire(self, entry: Entry, fire: datetime) -> None:
        running = self._running(entry)
        if entry.buffered is not None and not running:
            # The held fire goes before this newer one. Deciding this one first would start
            # it while the held fire still waits, to run after it (out of order) whenever the
            # previous run ends between the last tick and the tick that makes this fire.
            running = self._release(entry)
        action = policy.overlap_action(entry.spec.overlap, running, entry.buffered is not None)
        mode: ClaimMode = "fire"
        if action is policy.OverlapAction.SKIP:
            mode = "skip"
        elif action is policy.OverlapAction.BUFFER:
            mode = "buffer"
        if not self._claim(entry, fire, mode):
            return
        if action is policy.OverlapAction.CANCEL_AND_FIRE and entry.last_task_id:
            self.app.control.revoke(entry.last_task_id, terminate=True)
        self._enqueue(entry, fire)

    def _enqueue(self, entry: Entry, fire: datetime) -> bool:
        """Enqueue a claimed fire under its idempotency key and commit it; True when a run
        was enqueued and committed."""
        token = self.lock.token
        if token is None:
            return False
        spec = entry.spec
        task_id = ""
        try:
            handle: TaskHandle[Any] = submit(
                spec.task, spec.payload, app=self.app, idempotency_key=fire_key(spec.name, fire)
            )
            task_id = handle.id
        except VoxFlowError as exc:
            # A task renamed or changed since the file was loaded: this fire cannot run.
            log.error("schedule %s: fire %s not enqueued: %s", spec.name, fire, exc)
        if not self.store.commit(token, spec.name, fire, task_id, entry.next_fire):
            self._step_down("a newer leader holds the fence")
            return False
        entry.last_fire = max(entry.last_fire or fire, fire)
        if task_id:
            entry.last_task_id = task_id
        if entry.buffered == fire:
            entry.buffered = None
            self.waiting.discard(spec.name)
        return bool(task_id)

    def _release_buffered(self) -> None:
        """Fire the buffered fire of every schedule whose previous run has ended."""
        for name in list(self.waiting):
            entry = self.entries.get(name)
            if entry is None or entry.buffered is None:
                self.waiting.discard(name)
                continue
            if self.lock.token is None or self._running(entry):
                continue
            self._release(entry)

    def _release(self, entry: Entry) -> bool:
        """Fire the held fire now; True when its run was enqueued."""
        held = entry.buffered
        if held is None:
            return False
        if self._claim(entry, held, "release"):
            return self._enqueue(entry, held)
        # Paused meanwhile, or already made: nothing is held any more.
        entry.buffered = None
        self.waiting.discard(entry.spec.name)
        return False
