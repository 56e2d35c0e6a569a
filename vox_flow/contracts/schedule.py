"""Wire types of the schedule area: definitions (loaded from files), state, listings."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Aliases are expanded here, so everything past the definition sees plain cron fields.
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class MissedRunPolicy(StrEnum):
    """What a schedule does with fires that fell in a downtime."""

    SKIP = "skip"  # nothing; the next regular fire only
    RUN_ONCE = "run_once"  # one fire (the latest missed) stands for all of them
    CATCH_UP = "catch_up"  # every missed fire in the window, at most `catch_up_max`


class OverlapPolicy(StrEnum):
    """What a fire does while the schedule's previous run is still going."""

    ALLOW = "allow"  # run anyway
    SKIP = "skip"  # drop this fire
    BUFFER_ONE = "buffer_one"  # hold it (one at most) until the previous run ends
    CANCEL_PREVIOUS = "cancel_previous"  # revoke the previous run, then fire


class ScheduleDefinition(BaseModel):
    """One schedule as written in a file of ``schedules/``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
    cron: str = Field(
        description="croniter syntax (5 fields, or 6 with seconds last) or an alias "
        "such as @hourly."
    )
    timezone: str = Field(default="UTC", description="IANA zone the cron fields are read in.")
    task: str = Field(min_length=1, description="Registered typed-task name.")
    payload: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    start: datetime | None = Field(
        default=None, description="No fire before this (naive: in the schedule's zone)."
    )
    end: datetime | None = Field(
        default=None, description="No fire after this (naive: in the schedule's zone)."
    )
    jitter_seconds: float = Field(
        default=0.0, ge=0, le=3600, description="Each fire is delayed by a stable 0..jitter."
    )
    missed_run: MissedRunPolicy = MissedRunPolicy.SKIP
    catch_up_window_seconds: float = Field(
        default=3600.0, gt=0, description="catch_up: missed fires older than this are dropped."
    )
    catch_up_max: int = Field(
        default=100, ge=1, description="catch_up: at most this many missed fires (the latest)."
    )
    overlap: OverlapPolicy = OverlapPolicy.ALLOW

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        expanded = CRON_ALIASES.get(value.strip().lower(), value.strip())
        if expanded.startswith("@"):
            raise ValueError(f"unknown alias {value!r}; known: {', '.join(CRON_ALIASES)}")
        if len(expanded.split()) not in (5, 6) or not croniter.is_valid(expanded):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return expanded

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value

    @model_validator(mode="after")
    def _window(self) -> ScheduleDefinition:
        if self.start is not None and self.end is not None:
            zone = ZoneInfo(self.timezone)
            start = self.start if self.start.tzinfo else self.start.replace(tzinfo=zone)
            end = self.end if self.end.tzinfo else self.end.replace(tzinfo=zone)
            if end <= start:
                raise ValueError("end must be after start")
        return self


class ScheduleState(BaseModel):
    """What the scheduler remembers of one schedule (kept in Redis)."""

    name: str
    last_fire: datetime | None = Field(
        default=None, description="The latest fire time dealt with (fired, skipped or paused)."
    )
    next_fire: datetime | None = None
    paused: bool = False
    last_task_id: str | None = Field(default=None, description="Task id of the latest run.")
    pending_fire: datetime | None = Field(
        default=None, description="A fire claimed but not yet committed (a leader died)."
    )
    buffered_fire: datetime | None = Field(
        default=None, description="overlap=buffer_one: the fire waiting for the previous run."
    )
    token: int | None = Field(default=None, description="Fencing token of the last write.")


class ScheduleView(BaseModel):
    """One schedule as `vox-flow schedules list --json` prints it."""

    name: str
    file: str
    cron: str
    timezone: str
    task: str
    enabled: bool
    paused: bool
    missed_run: MissedRunPolicy
    overlap: OverlapPolicy
    last_fire: datetime | None
    next_fires: list[datetime]


WIRE: tuple[type[BaseModel], ...] = (ScheduleDefinition, ScheduleState, ScheduleView)
