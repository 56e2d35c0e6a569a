"""Replaying a dead letter: enqueue its task again, once however often it is asked.

Replay is a small state machine (dead -> replaying -> replayed) whose first step also fixes the
new task id and payload. A replay interrupted after that step is finished by the next call with
the same task id, and the run carries an idempotency key, so replaying twice runs the task once.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from vox_flow.contracts.task import DeadLetterState
from vox_flow.deadletters.store import DeadLetterStore
from vox_flow.handle import TaskHandle
from vox_flow.submit import publish
from vox_flow.tasks import lookup

if TYPE_CHECKING:
    from collections.abc import Mapping

    from vox_flow.application import VoxFlow


def replay(
    app: VoxFlow, letter_id: str, payload: Mapping[str, Any] | None = None
) -> tuple[TaskHandle[Any], bool]:
    """Enqueue the dead letter's task again (with an edited payload if given).

    The edited payload is validated first: an invalid one raises PayloadError and changes
    nothing. Returns the handle and whether this call started the replay (False: it had
    been replayed, or started, before; the same task id is used). Raises DeadLetterNotFound.
    """
    store = DeadLetterStore(app.redis)
    letter = store.get(letter_id)
    typed = lookup(app, letter.task_name)
    model = typed.validate(letter.payload if payload is None else payload)
    state, task_id, payload_json = store.begin_replay(
        letter_id, str(uuid.uuid4()), model.model_dump_json()
    )
    if state == DeadLetterState.REPLAYED.value:
        return TaskHandle(app, task_id, typed.output_model), False
    # 'started', or a replay a crash left half-done: (re)publish the same run. The key makes
    # a second publish of it harmless.
    handle = publish(
        typed,
        typed.validate(json.loads(payload_json)),
        task_id=task_id,
        effect_key=letter.idempotency_key or f"dlq:{letter.id}",
    )
    store.mark_replayed(letter_id)
    return handle, state == "started"
