"""Operator operations on schedules: list, pause, resume, trigger now, reload.

Pause, resume and trigger are operator actions: each goes through
:func:`record_operator_action`, which appends a signed audit entry with
``vox_flow.control.actions.perform`` and applies the Redis effect through the audit outbox
(so an entry never exists without its effect, nor an effect without its entry).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vox_flow.contracts.audit import AuditEntry
from vox_flow.contracts.schedule import ScheduleState, ScheduleView
from vox_flow.control.actions import Auditor, Effects, perform
from vox_flow.errors import VoxFlowError
from vox_flow.schedules.cron import Cron
from vox_flow.schedules.loader import Loaded, load_dir
from vox_flow.schedules.policy import window
from vox_flow.schedules.store import ScheduleStore
from vox_flow.schedules.timetable import fire_key, utc_now
from vox_flow.submit import TaskHandle, submit

if TYPE_CHECKING:
    from vox_flow.app import VoxFlow

PAUSE, RESUME, TRIGGER = "schedule.pause", "schedule.resume", "schedule.trigger"


class UnknownSchedule(VoxFlowError, LookupError):
    """No loaded schedule has that name."""


def schedule_effects(app: VoxFlow) -> Effects:
    """The outside effects of the schedule actions (each idempotent, as the outbox needs)."""
    effects = Effects()
    store = ScheduleStore(app.redis)

    @effects.outside(PAUSE)
    def _pause(entry: AuditEntry) -> None:
        store.set_paused(entry.target, True)

    @effects.outside(RESUME)
    def _resume(entry: AuditEntry) -> None:
        store.set_paused(entry.target, False)

    @effects.outside(TRIGGER)
    def _trigger(entry: AuditEntry) -> None:
        data = entry.payload_data()
        fire = datetime.fromisoformat(data["fire_time"])
        # The key holds the fire time chosen before the entry: a replay enqueues nothing.
        submit(data["task"], data["payload"], app=app, idempotency_key=fire_key(entry.target, fire))

    return effects


def record_operator_action(
    app: VoxFlow,
    auditor: Auditor,
    *,
    action: str,
    name: str,
    actor: str,
    reason: str,
    payload: dict[str, Any] | None = None,
) -> AuditEntry:
    """Do one schedule action and append its signed audit entry (the one seam for both)."""
    return perform(
        auditor.store,
        auditor.signer,
        schedule_effects(app),
        actor=actor,
        action=action,
        target=name,
        reason=reason,
        payload=payload or {},
    )


def _known(loaded: Loaded, name: str) -> None:
    if name not in loaded.definitions:
        known = ", ".join(sorted(loaded.definitions)) or "none"
        raise UnknownSchedule(f"no schedule named {name!r}; loaded: {known}")


def pause(
    app: VoxFlow, loaded: Loaded, name: str, *, auditor: Auditor, actor: str, reason: str
) -> AuditEntry:
    """Pause ``name``: its fires are skipped (not caught up) until it is resumed."""
    _known(loaded, name)
    return record_operator_action(app, auditor, action=PAUSE, name=name, actor=actor, reason=reason)


def resume(
    app: VoxFlow, loaded: Loaded, name: str, *, auditor: Auditor, actor: str, reason: str
) -> AuditEntry:
    """Resume ``name``: it fires again from its next regular fire time."""
    _known(loaded, name)
    return record_operator_action(
        app, auditor, action=RESUME, name=name, actor=actor, reason=reason
    )


def trigger(
    app: VoxFlow,
    loaded: Loaded,
    name: str,
    *,
    auditor: Auditor,
    actor: str,
    reason: str,
    now: datetime | None = None,
) -> tuple[AuditEntry, TaskHandle[Any]]:
    """Fire ``name`` now, outside its cron (its fire time is now, to the millisecond)."""
    _known(loaded, name)
    spec = loaded.definitions[name]
    fire = (now or utc_now()).astimezone(UTC)
    fire = fire.replace(microsecond=fire.microsecond // 1000 * 1000)
    payload = {"fire_time": fire.isoformat(), "task": spec.task, "payload": spec.payload}
    entry = record_operator_action(
        app, auditor, action=TRIGGER, name=name, actor=actor, reason=reason, payload=payload
    )
    # Submitting again with the same key returns the handle of the run the effect enqueued.
    handle: TaskHandle[Any] = submit(
        spec.task, spec.payload, app=app, idempotency_key=fire_key(name, fire)
    )
    return entry, handle


def reload(app: VoxFlow) -> int:
    """Ask every scheduler replica to reload its schedule files; returns the generation."""
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
