"""Fire times across DST changes (Europe/Berlin) and with a wall clock that jumps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from vox_flow.contracts.schedule import ScheduleDefinition
from vox_flow.schedules.cron import Cron
from vox_flow.schedules.policy import plan

BERLIN = ZoneInfo("Europe/Berlin")


def local(*fields: int, fold: int = 0) -> datetime:
    return datetime(*fields, tzinfo=BERLIN, fold=fold).astimezone(UTC)  # type: ignore[misc]


def walls(fires: list[datetime]) -> list[str]:
    return [f.astimezone(BERLIN).strftime("%m-%d %H:%M%z") for f in fires]


def test_spring_gap_fires_once_at_the_first_instant_after_it() -> None:
    cron = Cron("30 2 * * *", "Europe/Berlin")
    fires = cron.upcoming(local(2024, 3, 30, 12, 0), 3)
    assert walls(fires) == ["03-31 03:00+0200", "04-01 02:30+0200", "04-02 02:30+0200"]


def test_spring_gap_collapses_every_wall_time_inside_it_into_one_fire() -> None:
    cron = Cron("*/15 * * * *", "Europe/Berlin")
    fires = cron.upcoming(local(2024, 3, 31, 1, 40), 4)
    assert walls(fires) == [
        "03-31 01:45+0100",
        "03-31 03:00+0200",  # 02:00, 02:15, 02:30, 02:45 and 03:00 are one fire
        "03-31 03:15+0200",
        "03-31 03:30+0200",
    ]


def test_autumn_repeat_fires_once_at_the_first_pass() -> None:
    cron = Cron("30 1 * * *", "Europe/Berlin")
    # 01:30 is not repeated in Berlin (02:00-02:59 is); 02:30 is the interesting wall time.
    assert walls(cron.upcoming(local(2024, 10, 26, 12, 0), 2)) == [
        "10-27 01:30+0200",
        "10-28 01:30+0100",
    ]
    repeated = Cron("30 2 * * *", "Europe/Berlin")
    assert walls(repeated.upcoming(local(2024, 10, 26, 12, 0), 2)) == [
        "10-27 02:30+0200",
        "10-28 02:30+0100",
    ]


def test_repeated_hour_second_pass_fires_nothing() -> None:
    cron = Cron("*/30 * * * *", "Europe/Berlin")
    fires = cron.upcoming(local(2024, 10, 27, 1, 50), 4)
    assert walls(fires) == [
        "10-27 02:00+0200",
        "10-27 02:30+0200",
        "10-27 03:00+0100",  # 02:00 and 02:30 CET (the second pass) do not fire again
        "10-27 03:30+0100",
    ]
    # Asked from inside the second pass, the next fire is still 03:00 CET.
    inside = local(2024, 10, 27, 2, 10, fold=1)
    assert walls([f for f in [cron.next_after(inside)] if f]) == ["10-27 03:00+0100"]


def test_latest_fire_inside_the_repeated_hour_is_the_first_pass() -> None:
    cron = Cron("*/30 * * * *", "Europe/Berlin")
    before = local(2024, 10, 27, 2, 10, fold=1)
    assert walls([f for f in [cron.last_at_or_before(before)] if f]) == ["10-27 02:30+0200"]


def test_fire_times_strictly_increase_across_both_changes() -> None:
    for start in (local(2024, 3, 30, 23, 0), local(2024, 10, 26, 23, 0)):
        fires = Cron("*/5 * * * *", "Europe/Berlin").fires(start, start + timedelta(hours=6), 999)
        assert fires == sorted(set(fires))
        assert len(fires) >= 60


def test_aliases_expand() -> None:
    definition = ScheduleDefinition(name="s", cron="@daily", timezone="Europe/Berlin", task="t")
    assert definition.cron == "0 0 * * *"


def test_clock_jumping_backwards_fires_nothing_again() -> None:
    definition = ScheduleDefinition(name="s", cron="* * * * *", task="t", missed_run="catch_up")
    last = datetime(2024, 1, 10, 12, 5, tzinfo=UTC)
    cron = Cron(definition.cron)
    grace = timedelta(seconds=30)
    for back in (timedelta(seconds=1), timedelta(minutes=3), timedelta(hours=2)):
        assert plan(cron, definition, last, last - back, grace).fires == []
    # Once the clock is past the last fire again, the next one fires once.
    assert plan(cron, definition, last, last + timedelta(minutes=1, seconds=1), grace).fires == [
        last + timedelta(minutes=1)
    ]


def test_clock_jumping_forward_follows_the_missed_run_policy() -> None:
    last = datetime(2024, 1, 10, 12, 0, tzinfo=UTC)
    jumped = last + timedelta(hours=1, seconds=10)
    grace = timedelta(seconds=30)
    results = {}
    for policy in ("skip", "run_once", "catch_up"):
        definition = ScheduleDefinition(
            name="s", cron="*/10 * * * *", task="t", missed_run=policy, catch_up_max=3
        )
        results[policy] = plan(Cron(definition.cron), definition, last, jumped, grace).fires
    top = last + timedelta(hours=1)
    assert results["skip"] == [top]  # 13:00 is on time (10 s late)
    assert results["run_once"] == [top - timedelta(minutes=10), top]
    assert results["catch_up"] == [top - timedelta(minutes=m) for m in (30, 20, 10, 0)]
