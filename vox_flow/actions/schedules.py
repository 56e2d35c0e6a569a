"""Audited actions on schedules: pause, resume and trigger now.

Each appends a signed audit entry and applies its Redis effect through the audit outbox
(``perform``), so an entry never exists without its effect, nor an effect without its entry.
Every effect is idempotent, as the outbox needs: a trigger's idempotency key holds the fire
time chosen before the entry, so running it again enqueues nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vox_flow.actions.perform import Auditor, Effects, perform
from vox_flow.schedules.cron import fire_key, utc_now
from vox_flow.schedules.operations import known
from vox_flow.schedules.store import ScheduleStore
from vox_flow.submit import submit

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow
    from vox_flow.contracts.audit import AuditEntry
    from vox_flow.handle import TaskHandle
    from vox_flow.schedules.loader import Loaded

PAUSE, RESUME, TRIGGER = "schedule.pause", "schedule.resume", "schedule.trigger"


def schedule_effects(app: VoxFlow) -> Effects:
    """The outside effects of the schedule actions; a trigger returns its run's handle."""
    effects = Effects()
    store = ScheduleStore(app.redis)

    # Ordered by audit seq: a pause retried by the outbox after a later resume (or the
    # other way round) changes nothing.
    @effects.outside(PAUSE)
    def _pause(entry: AuditEntry) -> bool:
        return store.set_paused(entry.target, True, entry.seq)

    @effects.outside(RESUME)
    def _resume(entry: AuditEntry) -> bool:
        return store.set_paused(entry.target, False, entry.seq)

    @effects.outside(TRIGGER)
    def _trigger(entry: AuditEntry) -> TaskHandle[Any]:
        data = entry.payload_data()
        fire = datetime.fromisoformat(data["fire_time"])
        return submit(
            data["task"], data["payload"], app=app, idempotency_key=fire_key(entry.target, fire)
        )

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
    results: dict[int, Any] | None = None,
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
        results=results,
    )


def pause(
    app: VoxFlow, loaded: Loaded, name: str, *, auditor: Auditor, actor: str, reason: str
) -> AuditEntry:
    """Pause ``name``: its fires are skipped (not caught up) until it is resumed."""
    known(loaded, name)
    return record_operator_action(app, auditor, action=PAUSE, name=name, actor=actor, reason=reason)


def resume(
    app: VoxFlow, loaded: Loaded, name: str, *, auditor: Auditor, actor: str, reason: str
) -> AuditEntry:
    """Resume ``name``: it fires again from its next regular fire time."""
    known(loaded, name)
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
    known(loaded, name)
    spec = loaded.definitions[name]
    fire = (now or utc_now()).astimezone(UTC)
    fire = fire.replace(microsecond=fire.microsecond // 1000 * 1000)
    payload = {"fire_time": fire.isoformat(), "task": spec.task, "payload": spec.payload}
    results: dict[int, Any] = {}
    entry = record_operator_action(
        app,
        auditor,
        action=TRIGGER,
        name=name,
        actor=actor,
        reason=reason,
        payload=payload,
        results=results,
    )
    return entry, results[entry.seq]
