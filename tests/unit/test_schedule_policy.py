"""Missed-run and overlap policies with an injected clock: every policy x downtime shape,
and the timetable applying the overlap policy (fake store, result backend and submit)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from vox_flow.contracts.schedule import (
    MissedRunPolicy,
    OverlapPolicy,
    ScheduleDefinition,
    ScheduleState,
)
from vox_flow.schedules import timetable
from vox_flow.schedules.cron import Cron
from vox_flow.schedules.loader import Loaded
from vox_flow.schedules.policy import OverlapAction, jitter, overlap_action, plan
from vox_flow.schedules.timetable import Timetable, fire_key

T0 = datetime(2024, 1, 10, 12, 0, tzinfo=UTC)  # last fire dealt with
MIN = timedelta(minutes=1)
GRACE = timedelta(seconds=30)


def spec(**fields: Any) -> ScheduleDefinition:
    base: dict[str, Any] = {"name": "s", "cron": "* * * * *", "task": "t"}
    return ScheduleDefinition(**{**base, **fields})


def minutes(*offsets: int) -> list[datetime]:
    return [T0 + n * MIN for n in offsets]


# (downtime shape, now) -> expected fires per policy (catch_up: window 10 min, max 5)
SHAPES = {
    "nothing due yet": (T0 + 30 * timedelta(seconds=1), [], [], []),
    "on time": (T0 + MIN + timedelta(seconds=2), minutes(1), minutes(1), minutes(1)),
    "late within grace": (T0 + MIN + timedelta(seconds=29), minutes(1), minutes(1), minutes(1)),
    "one missed": (T0 + MIN + timedelta(seconds=40), [], minutes(1), minutes(1)),
    "two missed": (T0 + 2 * MIN + timedelta(seconds=40), [], minutes(2), minutes(1, 2)),
    "one missed and one on time": (
        T0 + 2 * MIN + timedelta(seconds=5),
        minutes(2),
        minutes(1, 2),
        minutes(1, 2),
    ),
    "three missed": (T0 + 3 * MIN + timedelta(seconds=45), [], minutes(3), minutes(1, 2, 3)),
    "more than max": (T0 + 8 * MIN + timedelta(seconds=45), [], minutes(8), minutes(4, 5, 6, 7, 8)),
    "beyond the window": (
        T0 + 60 * MIN + timedelta(seconds=45),
        [],
        minutes(60),
        minutes(56, 57, 58, 59, 60),
    ),
    "clock jumped backwards": (T0 - 5 * MIN, [], [], []),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("policy", list(MissedRunPolicy))
def test_missed_run_policy(shape: str, policy: MissedRunPolicy) -> None:
    now, skip, run_once, catch_up = SHAPES[shape]
    expected = {"skip": skip, "run_once": run_once, "catch_up": catch_up}[policy.value]
    definition = spec(missed_run=policy, catch_up_window_seconds=600, catch_up_max=5)
    result = plan(Cron(definition.cron), definition, T0, now, GRACE)
    assert result.fires == expected
    assert result.fires == sorted(set(result.fires))  # in order, no fire twice
    if result.fires:
        assert result.dealt_with is not None and result.dealt_with >= result.fires[-1]


def test_catch_up_window_drops_old_fires_even_under_max() -> None:
    definition = spec(missed_run="catch_up", catch_up_window_seconds=150, catch_up_max=100)
    now = T0 + 10 * MIN + timedelta(seconds=45)
    result = plan(Cron(definition.cron), definition, T0, now, GRACE)
    assert result.fires == minutes(9, 10)
    assert result.dropped == 8


def test_skip_records_dropped_fires_as_dealt_with() -> None:
    now = T0 + 3 * MIN + timedelta(seconds=45)
    result = plan(Cron("* * * * *"), spec(), T0, now, GRACE)
    assert result.fires == []
    assert result.dealt_with == T0 + 3 * MIN  # never offered again
    assert result.dropped == 3


def test_start_and_end_bound_the_fires() -> None:
    definition = spec(
        missed_run="catch_up",
        start=datetime(2024, 1, 10, 12, 3),
        end=datetime(2024, 1, 10, 12, 5),
    )
    now = T0 + 9 * MIN + timedelta(seconds=45)
    result = plan(Cron(definition.cron), definition, T0, now, GRACE)
    assert result.fires == minutes(3, 4, 5)


def test_naive_start_is_read_in_the_schedule_zone() -> None:
    definition = spec(
        missed_run="catch_up", timezone="Europe/Berlin", start=datetime(2024, 1, 10, 13, 3)
    )
    now = T0 + 4 * MIN + timedelta(seconds=45)  # 13:04:45 Berlin
    assert plan(Cron(definition.cron), definition, T0, now, GRACE).fires == minutes(3, 4)


OVERLAP = [
    # policy, previous running, one already buffered -> action
    ("allow", False, False, OverlapAction.FIRE),
    ("allow", True, False, OverlapAction.FIRE),
    ("skip", False, False, OverlapAction.FIRE),
    ("skip", True, False, OverlapAction.SKIP),
    ("buffer_one", False, False, OverlapAction.FIRE),
    ("buffer_one", True, False, OverlapAction.BUFFER),
    ("buffer_one", True, True, OverlapAction.SKIP),
    # The held fire is released first; this one is held behind it.
    ("buffer_one", False, True, OverlapAction.BUFFER),
    ("cancel_previous", False, False, OverlapAction.FIRE),
    ("cancel_previous", True, False, OverlapAction.CANCEL_AND_FIRE),
]


@pytest.mark.parametrize(("policy", "running", "buffered", "action"), OVERLAP)
def test_overlap_policy(policy: str, running: bool, buffered: bool, action: OverlapAction) -> None:
    assert overlap_action(OverlapPolicy(policy), running, buffered) is action


def test_every_overlap_policy_is_covered() -> None:
    assert {row[0] for row in OVERLAP} == {p.value for p in OverlapPolicy}


def test_jitter_is_stable_and_bounded() -> None:
    values = [jitter("s", T0 + n * MIN, 30) for n in range(200)]
    assert values == [jitter("s", T0 + n * MIN, 30) for n in range(200)]
    assert all(0 <= v < 30 for v in values)
    assert len(set(values)) > 150
    assert jitter("s", T0, 0) == 0


# --- the timetable applying the overlap policy ------------------------------------------------


class FakeStore:
    """ScheduleStore's claim and commit rules (the Lua scripts of store.py), in memory, for
    one leader (no fencing)."""

    def __init__(self, client: object = None) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def row(self, name: str) -> dict[str, Any]:
        return self.rows.setdefault(name, {})

    def states(self, names: Any) -> dict[str, ScheduleState]:
        out = {}
        for name in names:
            r = self.row(name)
            out[name] = ScheduleState(
                name=name,
                last_fire=r.get("last_fire"),
                paused=r.get("paused", False),
                last_task_id=r.get("last_task_id"),
                pending_fire=r.get("pending"),
                buffered_fire=r.get("buffered"),
            )
        return out

    def baseline(self, marks: dict[str, datetime]) -> None:
        for name, when in marks.items():
            self.row(name).setdefault("last_fire", when)

    def generation(self) -> int:
        return 0

    def claim(self, token: int, name: str, fire: datetime, mode: str) -> str:
        r = self.row(name)
        if mode == "release":
            if r.get("buffered") != fire:
                return "done"
            if r.get("paused"):
                del r["buffered"]
                return "paused"
            r["pending"] = fire
            return "ok"
        if r.get("last_fire") is not None and r["last_fire"] >= fire:
            return "done"
        if r.get("paused") or mode == "skip":
            r["last_fire"] = fire
            return "paused" if r.get("paused") else "skipped"
        if mode == "buffer":
            r["last_fire"] = r["buffered"] = fire
            return "buffered"
        r["pending"] = fire
        return "ok"

    def commit(
        self, token: int, name: str, fire: datetime, task_id: str, next_fire: datetime | None
    ) -> bool:
        r = self.row(name)
        r["last_fire"] = max(r.get("last_fire") or fire, fire)
        for field in ("pending", "buffered"):
            if r.get(field) == fire:
                del r[field]
        if task_id:
            r["last_task_id"] = task_id
        return True


class FakeLock:
    """A leader lock this replica holds for good."""

    token: int | None = 1

    def try_acquire(self) -> int | None:
        return self.token

    def keep(self) -> bool:
        return True

    def leading(self) -> bool:
        return True

    def release(self) -> None:
        self.token = None


class FakeApp:
    """What the timetable uses of the app: settings, result states, revoke, and submit."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(
            beat_tick_seconds=0.1,
            beat_misfire_grace_seconds=1.0,
            beat_leader_ttl_seconds=3.0,
            result_ttl_seconds=86_400,
        )
        self.redis = None
        self.results: dict[str, str] = {}  # task id -> state; PENDING when absent
        self.runs: dict[str, str] = {}  # idempotency key -> task id, in submit order
        self.revoked: list[str] = []
        self.control = SimpleNamespace(revoke=self.revoke)

    def AsyncResult(self, task_id: str) -> SimpleNamespace:
        return SimpleNamespace(state=self.results.get(task_id, "PENDING"))

    def revoke(self, task_id: str, terminate: bool = False) -> None:
        self.revoked.append(task_id)

    def submit(self, task: str, payload: Any, *, app: Any, idempotency_key: str) -> Any:
        # A key submitted again returns the run it enqueued the first time.
        task_id = self.runs.setdefault(idempotency_key, f"run-{len(self.runs) + 1}")
        return SimpleNamespace(id=task_id)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def fake_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApp]:
    app = FakeApp()
    monkeypatch.setattr(timetable, "ScheduleStore", FakeStore)
    monkeypatch.setattr(timetable, "submit", app.submit)
    yield app


def leading(app: FakeApp, overlap: str, clock: Clock) -> Timetable:
    """A timetable leading one every-second schedule ``s``."""
    definition = spec(cron="* * * * * *", overlap=overlap)
    loaded = Loaded(definitions={definition.name: definition})
    return Timetable(app, loaded, clock=clock, lock=FakeLock())  # type: ignore[arg-type]


def second(n: float) -> datetime:
    return T0 + timedelta(seconds=n)


def keys(*fires: float) -> list[str]:
    return [fire_key("s", second(n)) for n in fires]


@pytest.mark.parametrize("ends", ["between ticks", "in the tick of the next fire"])
def test_buffer_one_releases_the_held_fire_before_a_newer_fire(
    fake_app: FakeApp, ends: str
) -> None:
    clock = Clock(second(0.5))
    table = leading(fake_app, "buffer_one", clock)
    store: FakeStore = table.store  # type: ignore[assignment]

    def tick_at(n: float) -> None:
        clock.now = second(n)
        table.tick()

    tick_at(1.0)  # fires at once: nothing runs
    tick_at(2.0)  # run-1 still going: held
    assert list(fake_app.runs) == keys(1) and store.row("s")["buffered"] == second(2)
    if ends == "between ticks":
        fake_app.results["run-1"] = "SUCCESS"
        tick_at(2.5)  # released by the tick that sees the run ended
        assert list(fake_app.runs) == keys(1, 2)
    else:
        tick_at(2.5)
        fake_app.results["run-1"] = "SUCCESS"  # visible only to the tick that makes fire 3
    tick_at(3.0)
    # Either way the held fire runs next, and fire 3 is held behind it.
    assert list(fake_app.runs) == keys(1, 2)
    assert store.row("s")["buffered"] == second(3)
    fake_app.results["run-2"] = "SUCCESS"
    tick_at(3.5)
    assert list(fake_app.runs) == keys(1, 2, 3)
    assert "buffered" not in store.row("s")


@pytest.mark.parametrize("previous", ["PENDING", "SUCCESS"])
def test_a_new_leader_revokes_before_finishing_a_pending_cancel_previous_fire(
    fake_app: FakeApp, monkeypatch: pytest.MonkeyPatch, previous: str
) -> None:
    # A leader died between its claim of fire 2 and its revoke of the run fire 1 made.
    store = FakeStore()
    store.rows["s"] = {"last_fire": second(1), "last_task_id": "run-0", "pending": second(2)}
    monkeypatch.setattr(timetable, "ScheduleStore", lambda client: store)
    fake_app.results["run-0"] = previous
    leading(fake_app, "cancel_previous", Clock(second(2.1)))
    assert fake_app.revoked == (["run-0"] if previous == "PENDING" else [])
    assert list(fake_app.runs) == keys(2)
    assert store.row("s")["last_task_id"] == "run-1" and "pending" not in store.row("s")
