"""Audited actions on dead letters: replay and purge.

Both effects are idempotent, as the outbox needs: replay is a state machine that runs the task
once however often it is called, and purging an id that is gone changes nothing.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from vox_flow.actions.perform import Effects
from vox_flow.deadletters.replay import replay
from vox_flow.deadletters.store import DeadLetterNotFound, DeadLetterStore

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow
    from vox_flow.contracts.audit import AuditEntry

# The operator actions on dead letters, as named in audit entries.
REPLAY, PURGE = "deadletter.replay", "deadletter.purge"


def deadletter_effects(app: VoxFlow) -> Effects:
    """The outside effects of the dead-letter actions.

    A replay returns ``(task id, started)``, or None when the dead letter was gone; a purge
    returns the ids it deleted.
    """
    effects = Effects()
    store = DeadLetterStore(app.redis)

    @effects.outside(REPLAY)
    def _replay(entry: AuditEntry) -> tuple[str, bool] | None:
        try:
            handle, started = replay(app, entry.target, entry.payload_data().get("payload"))
        except DeadLetterNotFound:
            return None  # purged since: nothing left to replay
        return handle.id, started

    @effects.outside(PURGE)
    def _purge(entry: AuditEntry) -> list[str]:
        deleted: list[Any] = []
        for letter_id in entry.payload_data()["ids"]:
            with contextlib.suppress(DeadLetterNotFound):
                store.purge(letter_id)
                deleted.append(letter_id)
        return deleted

    return effects
