"""Fire times of a cron expression in an IANA zone, as UTC instants, with a fixed DST rule.

croniter walks *wall* times (naive, in the schedule's zone); this module maps each wall time
to an instant:

* a wall time that does not exist (the spring gap, e.g. 02:30 Europe/Berlin on the last
  Sunday of March) fires once, at the first valid instant after the gap (03:00 local);
  several wall times of one gap collapse into that one fire;
* a wall time that happens twice (the autumn repeat, e.g. 01:30 or 02:30) fires once, at its
  first occurrence (the summer-time one); the repeated hour's second pass fires nothing.

Every instant returned is strictly increasing, so a fire time is a stable identity.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

if TYPE_CHECKING:
    from collections.abc import Iterator

# A schedule whose expression matches nothing for this long is treated as finished.
HORIZON_YEARS = 5
_HORIZON = timedelta(days=366 * HORIZON_YEARS)


def _exists(wall: datetime, zone: ZoneInfo) -> bool:
    local = wall.replace(tzinfo=zone)
    return local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall


def _gap_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant after the spring gap that swallowed ``wall`` (a UTC datetime)."""
    # fold=1 reads the wall time with the offset after the change, fold=0 with the one
    # before: the transition lies between the two readings.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    low, high = min(low, high), max(low, high)
    before = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        mid = low + (high - low) / 2
        if mid.astimezone(zone).utcoffset() == before:
            low = mid
        else:
            high = mid
    return high.replace(microsecond=0)


class Cron:
    """The fire instants of one expression in one zone (see the module's DST rule)."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        if not croniter.is_valid(expression):
            raise ValueError(f"{expression!r} is not a valid cron expression")
        self.expression = expression
        self.zone = ZoneInfo(timezone)
        # Parsing is most of croniter's cost: parse once, then move the one walker around.
        self._walker = croniter(expression, datetime(2000, 1, 1))

    def _walk(self, wall: datetime) -> croniter:
        self._walker.set_current(wall, force=True)
        return self._walker

    def instant(self, wall: datetime) -> datetime:
        """The UTC instant a naive wall time fires at, under the DST rule."""
        if not _exists(wall, self.zone):
            return _gap_end(wall, self.zone)
        return wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)

    def _walls_after(self, after: datetime) -> Iterator[datetime]:
        wall = after.astimezone(self.zone).replace(tzinfo=None, fold=0)
        walker = self._walk(wall)
        while True:
            try:
                wall = walker.get_next(datetime)
            except CroniterBadDateError:
                # No date matches (30 February): croniter gave up after a bounded search.
                return
            yield wall

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire strictly after the instant ``after`` (None if none within years)."""
        # In the second pass of a repeated hour the wall clock reads earlier than the fires
        # already made: those wall times map to their first pass and are dropped here.
        for wall in self._walls_after(after):
            when = self.instant(wall)
            if when > after:
                return when if when - after <= _HORIZON else None
        return None  # the expression matches no date

    def ever_fires(self, after: datetime) -> bool:
        """Whether the expression fires within ``HORIZON_YEARS`` after ``after`` (a bounded
        search: ``0 0 30 2 *`` never does)."""
        return self.next_after(after) is not None

    def fires(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Fires in ``(after, until]``, in order, at most ``limit`` (the earliest ones)."""
        out: list[datetime] = []
        when = self.next_after(after)
        while when is not None and when <= until and len(out) < limit:
            out.append(when)
            when = self.next_after(when)
        return out

    def last_at_or_before(self, before: datetime) -> datetime | None:
        """The latest fire at or before the instant ``before`` (None if none within years)."""
        local = before.astimezone(self.zone)
        wall = local.replace(tzinfo=None, fold=0) + timedelta(seconds=1)
        if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
            # Inside a repeated hour the wall clock reads earlier than first-pass fires
            # already made: walk back from an hour ahead so none is overlooked.
            wall += timedelta(hours=1)
        walker = self._walk(wall)
        while True:
            try:
                when = self.instant(walker.get_prev(datetime))
            except CroniterBadDateError:
                return None  # no date matches the expression
            if when <= before:
                return when
            if when < before - _HORIZON:  # pragma: no cover - defensive
                return None

    def latest(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """The latest ``limit`` fires in ``(after, until]``, in order (walks backwards)."""
        out: list[datetime] = []
        when = self.last_at_or_before(until)
        while when is not None and when > after and len(out) < limit:
            out.append(when)
            when = self.last_at_or_before(when - timedelta(microseconds=1))
        out.reverse()
        return out

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fires after ``after``."""
        out: list[datetime] = []
        when: datetime | None = after
        while len(out) < count:
            assert when is not None
            when = self.next_after(when)
            if when is None:
                break
            out.append(when)
        return out


def utc_now() -> datetime:
    """The wall clock, as an aware UTC datetime."""
    return datetime.now(UTC)


def fire_key(name: str, fire: datetime) -> str:
    """The idempotency key of one fire: schedule name and fire time (UTC, ISO 8601)."""
    return f"schedule:{name}:{fire.astimezone(UTC).isoformat()}"
