"""Cron schedules that fire exactly once across any number of scheduler replicas.

Definitions are data files in ``schedules/`` (loader.py); fire times follow a fixed DST rule
(cron.py); missed-run and overlap policies are pure functions (policy.py); state lives in
Redis behind fenced scripts (store.py, leader.py); ``Timetable`` (timetable.py) is the loop
body that ``VoxScheduler`` (scheduler.py) runs inside ``celery beat``; operations.py holds
list / pause / resume / trigger / reload. See docs/schedules.md.
"""

from __future__ import annotations

from vox_flow.control.actions import Auditor
from vox_flow.schedules.cron import Cron
from vox_flow.schedules.loader import Loaded, ScheduleFileError, load_dir, load_file
from vox_flow.schedules.operations import (
    UnknownSchedule,
    load,
    pause,
    record_operator_action,
    reload,
    resume,
    trigger,
    views,
)
from vox_flow.schedules.timetable import Timetable, fire_key

__all__ = [
    "Auditor",
    "Cron",
    "Loaded",
    "ScheduleFileError",
    "Timetable",
    "UnknownSchedule",
    "fire_key",
    "load",
    "load_dir",
    "load_file",
    "pause",
    "record_operator_action",
    "reload",
    "resume",
    "trigger",
    "views",
]
