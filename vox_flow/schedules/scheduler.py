"""The Celery beat scheduler that `celery -A vox_flow.app beat -S` takes.

    celery -A vox_flow.app beat -S vox_flow.schedules.scheduler:VoxScheduler

Celery's own entries (``beat_schedule``) are not used: the schedules come from the files in
``schedules_dir`` and fire through ``Timetable``, which runs any number of replicas safely.
"""

from __future__ import annotations

from typing import Any

from celery import beat

from vox_flow import telemetry
from vox_flow.application import VoxFlow
from vox_flow.schedules.loader import Loaded, load_dir
from vox_flow.schedules.timetable import Timetable


class VoxScheduler(beat.Scheduler):
    """A beat scheduler whose tick is ``Timetable.tick`` (leader lock, fencing, policies)."""

    timetable: Timetable | None = None

    @property
    def vox(self) -> VoxFlow:
        """The app, which must be a VoxFlow (its settings name the schedule files)."""
        if not isinstance(self.app, VoxFlow):
            raise TypeError("VoxScheduler runs with a vox_flow app: celery -A vox_flow.app beat")
        return self.app

    def _load(self) -> Loaded:
        return load_dir(self.vox, self.vox.settings.schedules_dir)

    def setup_schedule(self) -> None:
        """Load the schedule files (bad files are logged and left out); beat is an entry
        point, so it starts telemetry here."""
        telemetry.init(self.vox.settings)
        self.timetable = Timetable(self.vox, self._load())

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One step of the timetable; returns how long beat may sleep."""
        if self.timetable is None:
            self.setup_schedule()
        assert self.timetable is not None
        self.timetable.reload_if_asked(self._load)
        return self.timetable.tick()

    def close(self) -> None:
        """Hand the leader lock over on shutdown."""
        if self.timetable is not None:
            self.timetable.close()
        super().close()

    @property
    def info(self) -> str:
        count = len(self.timetable.entries) if self.timetable else 0
        replica = self.timetable.lock.replica if self.timetable else "-"
        return f"    . vox_flow schedules: {count} loaded, replica {replica}"
