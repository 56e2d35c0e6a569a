"""Audited actions on dead letters: replay and purge.

Both effects are idempotent, as the outbox needs: replay is a state machine that runs the task
once however often it is called, and purging an id that is gone changes nothing.

An entry is appended only for a replay that can run: :func:`replay_letter` checks first, and
refuses with nothing recorded a letter that is replayed already (or whose begun replay runs
another payload), a task that is not registered, and a payload that does not validate or is
larger than ``MAX_PAYLOAD_BYTES``. The entry carries the payload as validated (extra fields
dropped), so it says exactly what ran.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from vox_flow.actions.perform import Effects, perform
from vox_flow.contracts.task import DeadLetterState
from vox_flow.deadletters.replay import replay
from vox_flow.deadletters.store import DeadLetterNotFound, DeadLetterStore
from vox_flow.errors import VoxFlowError
from vox_flow.tasks import lookup

if TYPE_CHECKING:
    from collections.abc import Mapping

    from vox_flow.actions.perform import Auditor
    from vox_flow.application import VoxFlow
    from vox_flow.contracts.audit import AuditEntry
    from vox_flow.contracts.task import DeadLetter

# The operator actions on dead letters, as named in audit entries.
REPLAY, PURGE = "deadletter.replay", "deadletter.purge"

# The largest edited payload a replay takes, as JSON text (the CLI's --payload) and as
# validated (what the audit entry carries): an entry is signed, kept and exported whole.
MAX_PAYLOAD_BYTES = 1024 * 1024


class AlreadyReplayed(VoxFlowError, ValueError):
    """The dead letter was replayed, or a replay of it with another payload is under way: this
    replay is refused, and nothing is recorded. ``letter`` holds when, and the task id."""

    def __init__(self, letter: DeadLetter) -> None:
        self.letter = letter
        when = letter.replayed_at.isoformat() if letter.replayed_at else "an unknown time"
        task = letter.replayed_task_id
        if letter.state is DeadLetterState.REPLAYED:
            what = (
                f"dead letter {letter.id} was already replayed at {when} as task {task}; "
                "a dead letter is replayed once"
            )
        else:
            what = (
                f"a replay of dead letter {letter.id} with another payload is under way since "
                f"{when} as task {task}; the audit outbox (`vox-flow control`) finishes it"
            )
        super().__init__(f"refused, nothing recorded: {what}")


class PayloadTooLarge(VoxFlowError, ValueError):
    """An edited payload larger than ``MAX_PAYLOAD_BYTES``; nothing is recorded."""

    def __init__(self, size: int, where: str = "the payload") -> None:
        self.size = size
        super().__init__(
            f"refused, nothing recorded: {where} is {size} bytes, more than the "
            f"{MAX_PAYLOAD_BYTES} bytes (1 MiB) a replay takes"
        )


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


def check_replay(
    app: VoxFlow, letter_id: str, payload: Mapping[str, Any] | None = None
) -> tuple[DeadLetter, dict[str, Any] | None]:
    """What a replay of ``letter_id`` would record, or why it cannot run (nothing changes).

    Returns the letter and the payload for the entry: the edit as validated (extra fields
    dropped), or None to replay the letter's own payload. A replay begun and not finished (a
    crash between its entry and its effect) may be finished so, with the payload it began
    with. Raises DeadLetterNotFound; AlreadyReplayed (replayed, or begun with another
    payload); UnknownTask; PayloadError (the edit, or the letter's own payload when the
    task's input model changed since); PayloadTooLarge.
    """
    store = DeadLetterStore(app.redis)
    letter = store.get(letter_id)
    if letter.state is DeadLetterState.REPLAYED:
        raise AlreadyReplayed(letter)
    typed = lookup(app, letter.task_name)
    # Validated now even "as is": an entry whose effect cannot validate stays pending for ever.
    source = letter.payload if payload is None else payload
    validated = typed.validate(source).model_dump(mode="json")
    if letter.state is DeadLetterState.REPLAYING and store.replay_payload(letter.id) != validated:
        raise AlreadyReplayed(letter)  # the replay under way runs another payload
    if payload is None:
        return letter, None
    size = len(json.dumps(validated, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(size, "the validated payload")
    return letter, validated


def replay_letter(
    app: VoxFlow,
    auditor: Auditor,
    letter_id: str,
    payload: Mapping[str, Any] | None = None,
    *,
    actor: str,
    reason: str,
) -> tuple[AuditEntry, str, bool]:
    """Replay a dead letter (with an edited payload if given) as an audited action.

    Everything :func:`check_replay` checks is checked before the entry is appended: a refused
    replay records nothing. Returns the entry, the replay's task id and whether this call
    started it (False: it finished a replay begun before, cut short by a crash or begun by
    another call since the check; that run is enqueued once). Raises DeadLetterNotFound when
    the letter was purged meanwhile (the entry stays: a replay asked for, nothing to run).
    """
    letter, recorded = check_replay(app, letter_id, payload)
    results: dict[int, Any] = {}
    entry = perform(
        auditor.store,
        auditor.signer,
        deadletter_effects(app),
        actor=actor,
        action=REPLAY,
        target=letter.id,
        reason=reason,
        payload={"payload": recorded},
        results=results,
    )
    outcome = results.get(entry.seq)
    if outcome is None:
        raise DeadLetterNotFound(letter.id)
    task_id, started = outcome
    return entry, task_id, started
