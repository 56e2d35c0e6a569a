"""Operations on schedules that need no audit entry: list (views), load, reload.

Pause, resume and trigger are audited operator actions: they live in
``vox_flow.actions.schedules``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from vox_flow.contracts.schedule import ScheduleState, ScheduleView
from vox_flow.errors import VoxFlowError
from vox_flow.schedules.cron import Cron, utc_now
from vox_flow.schedules.loader import Loaded, ScheduleFileError, load_dir
from vox_flow.schedules.policy import window
from vox_flow.schedules.store import ScheduleStore

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow


class UnknownSchedule(VoxFlowError, LookupError):
    """No loaded schedule has that name."""


class BadScheduleFiles(VoxFlowError, ValueError):
    """A reload refused: some schedule files here do not load. Nothing was reloaded."""

    def __init__(self, errors: list[ScheduleFileError]) -> None:
        self.errors = errors
        names = ", ".join(error.file.name for error in errors)
        super().__init__(
            f"refused, nothing reloaded: {len(errors)} schedule file(s) do not load: {names}"
        )


def known(loaded: Loaded, name: str) -> None:
    """Raise UnknownSchedule unless ``name`` is loaded."""
    if name not in loaded.definitions:
        names = ", ".join(sorted(loaded.definitions)) or "none"
        message = f"no schedule named {name!r}; loaded: {names}"
        if loaded.errors:
            bad = ", ".join(error.file.name for error in loaded.errors)
            message += f"; not loaded (bad files): {bad}"
        raise UnknownSchedule(message)


def reload(app: VoxFlow, loaded: Loaded | None = None, *, skip_bad: bool = False) -> int:
    """Ask every scheduler replica to reload its schedule files; returns the generation.

    ``loaded``: the files as this process reads them, checked first: when some are bad the
    reload is refused (BadScheduleFiles, nothing asked) unless ``skip_bad``, and then every
    replica loads the good files and leaves the bad ones out.
    """
    if loaded is not None and loaded.errors and not skip_bad:
        raise BadScheduleFiles(loaded.errors)
    return ScheduleStore(app.redis).bump_generation()


def load(app: VoxFlow) -> Loaded:
    """The schedules in the configured ``schedules_dir``."""
    return load_dir(app, app.settings.schedules_dir)


def views(
    app: VoxFlow,
    loaded: Loaded,
    count: int = 5,
    now: datetime | None = None,
    *,
    with_state: bool = True,
) -> list[ScheduleView]:
    """Every loaded schedule with its state (unless ``with_state`` is False: no broker is
    needed then) and its next ``count`` fire times."""
    now = now or utc_now()
    if with_state:
        states = ScheduleStore(app.redis).states(loaded.definitions)
    else:
        states = {name: ScheduleState(name=name) for name in loaded.definitions}
    out = []
    for name, spec in sorted(loaded.definitions.items()):
        state = states[name]
        cron = Cron(spec.cron, spec.timezone)
        start, end = window(spec)
        after = max(now, state.last_fire or now)
        if start is not None:
            after = max(after, start - timedelta(microseconds=1))
        fires = [f for f in cron.upcoming(after, count) if end is None or f <= end]
        out.append(
            ScheduleView(
                name=name,
                file=str(loaded.files[name]),
                cron=spec.cron,
                timezone=spec.timezone,
                task=spec.task,
                enabled=spec.enabled,
                paused=state.paused,
                missed_run=spec.missed_run,
                overlap=spec.overlap,
                last_fire=state.last_fire,
                next_fires=fires if spec.enabled else [],
            )
        )
    return out
