"""The decisions a schedule makes, as pure functions of its state and the time.

Nothing here reads a clock or Redis: the scheduler passes ``now`` in, so every policy can be
tested against any downtime shape in microseconds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from vox_flow.contracts.schedule import MissedRunPolicy, OverlapPolicy, ScheduleDefinition

if TYPE_CHECKING:
    from vox_flow.schedules.cron import Cron

# An every-second schedule has 3,600 on-time fires an hour; a plan never lists more.
_ON_TIME_LIMIT = 10_000


@dataclass(frozen=True)
class Plan:
    """What to do now: ``fires`` to make, in order; ``dealt_with`` is the latest fire time
    the plan covers (fired or dropped), to be recorded as done."""

    fires: list[datetime]
    dealt_with: datetime | None
    dropped: int = 0


def _aware(value: datetime, zone: str) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(zone))


def window(spec: ScheduleDefinition) -> tuple[datetime | None, datetime | None]:
    """The schedule's start and end as aware instants (naive ones read in its zone)."""
    start = _aware(spec.start, spec.timezone) if spec.start else None
    end = _aware(spec.end, spec.timezone) if spec.end else None
    return start, end


def plan(
    cron: Cron,
    spec: ScheduleDefinition,
    last_fire: datetime,
    now: datetime,
    grace: timedelta,
) -> Plan:
    """The fires due at ``now`` for a schedule whose fires up to ``last_fire`` are dealt with.

    A fire at or after ``now - grace`` is on time and always made. Older ones were missed
    (downtime, a stalled process, the wall clock jumping forward) and follow the missed-run
    policy: ``skip`` makes none, ``run_once`` makes the latest, ``catch_up`` makes those
    inside the catch-up window, the latest ``catch_up_max`` of them. A clock that jumped
    backwards gives ``now <= last_fire``: nothing is due and nothing fires twice.
    """
    start, end = window(spec)
    low = last_fire
    if start is not None and start - timedelta(microseconds=1) > low:
        low = start - timedelta(microseconds=1)
    high = now if end is None else min(now, end)
    if high <= low:
        return Plan([], None)
    cut = now - grace
    on_time = cron.fires(max(low, cut), high, _ON_TIME_LIMIT)
    missed: list[datetime] = []
    latest_missed: datetime | None = None
    if min(cut, high) > low:
        latest_missed = cron.last_at_or_before(min(cut, high))
        if latest_missed is not None and latest_missed <= low:
            latest_missed = None
    dropped = 0
    if latest_missed is not None:
        if spec.missed_run is MissedRunPolicy.RUN_ONCE:
            missed = [latest_missed]
        elif spec.missed_run is MissedRunPolicy.CATCH_UP:
            floor = max(low, now - timedelta(seconds=spec.catch_up_window_seconds))
            missed = cron.latest(floor, latest_missed, spec.catch_up_max)
        dropped = _count(cron, low, latest_missed) - len(missed)
    fires = missed + on_time
    dealt_with = on_time[-1] if on_time else latest_missed
    return Plan(fires, dealt_with, dropped)


def _count(cron: Cron, low: datetime, high: datetime, limit: int = 1000) -> int:
    """How many fires lie in ``(low, high]`` (counted up to ``limit``, for logs only)."""
    return len(cron.fires(low, high, limit))


class OverlapAction(StrEnum):
    """What one fire does, given whether the previous run is still going."""

    FIRE = "fire"
    SKIP = "skip"
    BUFFER = "buffer"
    CANCEL_AND_FIRE = "cancel_and_fire"


def overlap_action(policy: OverlapPolicy, previous_running: bool, buffered: bool) -> OverlapAction:
    """The overlap policy's answer for one fire (``buffered``: one fire already waits).

    A held fire runs before any newer fire of its schedule. So buffer_one with one fire held
    and the previous run ended answers BUFFER: the held fire is released first (the caller
    does that) and this one is held behind it.
    """
    if policy is OverlapPolicy.BUFFER_ONE and buffered and not previous_running:
        return OverlapAction.BUFFER
    if not previous_running or policy is OverlapPolicy.ALLOW:
        return OverlapAction.FIRE
    if policy is OverlapPolicy.SKIP:
        return OverlapAction.SKIP
    if policy is OverlapPolicy.BUFFER_ONE:
        # The first waiting fire is kept; later ones while it waits are dropped.
        return OverlapAction.SKIP if buffered else OverlapAction.BUFFER
    return OverlapAction.CANCEL_AND_FIRE


def jitter(name: str, fire: datetime, jitter_seconds: float) -> float:
    """A delay in ``[0, jitter_seconds)`` that every replica computes alike for one fire."""
    if jitter_seconds <= 0:
        return 0.0
    digest = hashlib.sha256(f"{name}|{fire.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * jitter_seconds
