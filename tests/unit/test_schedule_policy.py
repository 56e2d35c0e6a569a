"""Missed-run and overlap policies with an injected clock: every policy x downtime shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vox_flow.contracts.schedule import MissedRunPolicy, OverlapPolicy, ScheduleDefinition
from vox_flow.schedules.cron import Cron
from vox_flow.schedules.policy import OverlapAction, jitter, overlap_action, plan

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
