"""The operator-action seam: an action and its signed audit entry never come apart.

Every privileged or destructive action goes through :func:`perform`, which looks its effect
up by action name in an :class:`Effects` registry:

* an **in-store** effect runs inside the very transaction that appends the entry: both
  commit or neither does;
* an **outside** effect (Redis: dead-letter purge/replay, schedule pause/resume …) uses an
  outbox. One transaction appends the entry and a ``pending`` outbox row; then the effect
  runs; then the row is marked ``done``. A crash in between leaves the row pending, and
  :func:`resume_pending` runs it again after restart — so outside effects must be
  idempotent (running one twice must equal running it once).

There is no other way to append an entry, and an action name with no registered effect is
refused, so nothing is recorded that was not done and nothing is done unrecorded. An effect may
return a value (a replay's new task id, the ids a purge deleted): :func:`perform_many` hands
them back by entry seq. ``registry.py`` assembles the one registry of every action.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, insert, select, update

from vox_flow.audit.keys import Signer, key_path, load_or_create
from vox_flow.audit.log import AuditError, AuditLog, Draft, append_entries, entry_from_row
from vox_flow.contracts.audit import AuditEntry
from vox_flow.store import Store, now_us, open_store
from vox_flow.store.rows import AuditEntryRow, AuditKeyRow, OutboxRow

if TYPE_CHECKING:
    from vox_flow.config import Settings

StoreEffect = Callable[[Connection, AuditEntry], Any]
OutsideEffect = Callable[[AuditEntry], Any]
_F = TypeVar("_F", bound=Callable[..., Any])

KEY_RETIRE = "key.retire"
_PENDING, _DONE = "pending", "done"


class UnknownAction(AuditError):
    """No effect is registered under the action's name."""


class EffectFailed(RuntimeError):
    """An outside effect raised; its entry is committed and its outbox row stays pending."""

    def __init__(self, entry: AuditEntry, error: BaseException) -> None:
        super().__init__(f"effect of {entry.action!r} (entry {entry.seq}) failed: {error}")
        self.entry = entry


def _retire_key(conn: Connection, entry: AuditEntry) -> None:
    """Retire key ``entry.target``: entries it signs after this one are invalid."""
    result = conn.execute(
        update(AuditKeyRow)
        .where(AuditKeyRow.key_id == entry.target, AuditKeyRow.retired_after_seq.is_(None))
        .values(retired_after_seq=entry.seq, retired_us=now_us())
    )
    if result.rowcount != 1:
        raise AuditError(f"key {entry.target} is not registered, or already retired")


@dataclass
class Auditor:
    """Where operator actions are recorded: the control store and the operator's key."""

    store: Store
    signer: Signer

    @classmethod
    def open(cls, settings: Settings, key_name: str = "operator") -> Auditor:
        """The configured store, and the key ``key_name`` in the data dir (registered)."""
        store = open_store(settings)
        signer = load_or_create(key_path(settings.data_dir, key_name), settings.node_id)
        AuditLog(store).register(signer)
        return cls(store, signer)


class Effects:
    """The registry of effects by action name (``key.retire`` is built in)."""

    def __init__(self) -> None:
        self._in_store: dict[str, StoreEffect] = {KEY_RETIRE: _retire_key}
        self._outside: dict[str, OutsideEffect] = {}

    def _check_free(self, action: str) -> None:
        if action in self._in_store or action in self._outside:
            raise ValueError(f"an effect is already registered for {action!r}")

    def in_store(self, action: str) -> Callable[[_F], _F]:
        """Register ``fn(conn, entry)``, run in the append's transaction."""

        def register(fn: _F) -> _F:
            self._check_free(action)
            self._in_store[action] = fn
            return fn

        return register

    def outside(self, action: str) -> Callable[[_F], _F]:
        """Register an idempotent ``fn(entry)``, run through the outbox after commit."""

        def register(fn: _F) -> _F:
            self._check_free(action)
            self._outside[action] = fn
            return fn

        return register

    def include(self, other: Effects) -> Effects:
        """Add every effect ``other`` registers (an action registered twice is an error)."""
        for action, store_fn in other._in_store.items():
            if action != KEY_RETIRE:
                self._check_free(action)
                self._in_store[action] = store_fn
        for action, outside_fn in other._outside.items():
            self._check_free(action)
            self._outside[action] = outside_fn
        return self

    def store_effect(self, action: str) -> StoreEffect | None:
        """The in-store effect of ``action``, if it has one."""
        return self._in_store.get(action)

    def outside_effect(self, action: str) -> OutsideEffect | None:
        """The outside effect of ``action``, if it has one."""
        return self._outside.get(action)


@dataclass(frozen=True)
class Action:
    """One operator action to perform and record."""

    actor: str
    action: str
    target: str
    reason: str
    payload: Mapping[str, Any] = field(default_factory=dict)


def perform(
    store: Store,
    signer: Signer,
    effects: Effects,
    *,
    actor: str,
    action: str,
    target: str,
    reason: str,
    payload: Mapping[str, Any] | None = None,
    results: dict[int, Any] | None = None,
) -> AuditEntry:
    """Do ``action`` and append its signed entry, atomically or through the outbox.

    Returns the committed entry; ``results``, when given, receives what the effect returned
    (by entry seq). Raises :class:`UnknownAction` (nothing written) for an
    unregistered action, re-raises an in-store effect's error (nothing written), and raises
    :class:`EffectFailed` when an outside effect fails (entry kept, outbox row pending).
    """
    request = Action(actor, action, target, reason, payload or {})
    return perform_many(store, signer, effects, [request], results)[0]


def perform_many(
    store: Store,
    signer: Signer,
    effects: Effects,
    actions: Sequence[Action],
    results: dict[int, Any] | None = None,
) -> list[AuditEntry]:
    """:func:`perform` for several actions with one transaction and one commit."""
    results = {} if results is None else results
    for request in actions:
        if not (effects.store_effect(request.action) or effects.outside_effect(request.action)):
            raise UnknownAction(f"no effect is registered for action {request.action!r}")
    drafts = [Draft(a.actor, a.action, a.target, a.reason, a.payload) for a in actions]
    outside: list[AuditEntry] = []
    # An outside effect runs after the commit, so the commit must be on disk first: a power
    # cut must not take back the entry of an effect that already happened.
    leaves_store = any(effects.store_effect(a.action) is None for a in actions)
    with store.write(durable=leaves_store) as conn:
        entries = append_entries(conn, signer, drafts, checkpoint_every=store.checkpoint_every)
        created = now_us()
        for entry in entries:
            in_store = effects.store_effect(entry.action)
            if in_store is not None:
                results[entry.seq] = in_store(conn, entry)
            else:
                outside.append(entry)
        if outside:
            conn.execute(
                insert(OutboxRow),
                [
                    {
                        "seq": e.seq,
                        "action": e.action,
                        "state": _PENDING,
                        "attempts": 0,
                        "last_error": None,
                        "created_us": created,
                        "updated_us": created,
                    }
                    for e in outside
                ],
            )
    if outside:
        _run_outside(store, effects, outside, results)
    return entries


def _run_outside(
    store: Store,
    effects: Effects,
    entries: Sequence[AuditEntry],
    results: dict[int, Any] | None = None,
) -> None:
    """Run ``entries``' outside effects in order, up to the first that fails, then record
    in one commit which are done (and the failure). Raises :class:`EffectFailed` for it;
    the entries after it stay pending, not run."""
    ran: list[int] = []
    error: BaseException | None = None
    for entry in entries:
        effect = effects.outside_effect(entry.action)
        try:
            if effect is None:
                raise UnknownAction(f"no outside effect is registered for {entry.action!r}")
            outcome = effect(entry)
        except Exception as caught:
            error = caught
            break
        ran.append(entry.seq)
        if results is not None:
            results[entry.seq] = outcome
    # Not a durable commit: lost to a power cut, the rows stay pending and the (idempotent)
    # effects run again on resume.
    with store.write() as conn:
        now = now_us()
        if ran:
            conn.execute(
                update(OutboxRow)
                .where(OutboxRow.seq.in_(ran), OutboxRow.state == _PENDING)
                .values(state=_DONE, attempts=OutboxRow.attempts + 1, updated_us=now)
            )
        if error is not None:
            conn.execute(
                update(OutboxRow)
                .where(OutboxRow.seq == entries[len(ran)].seq, OutboxRow.state == _PENDING)
                .values(
                    attempts=OutboxRow.attempts + 1,
                    last_error=f"{type(error).__name__}: {error}",
                    updated_us=now,
                )
            )
    if error is not None:
        raise EffectFailed(entries[len(ran)], error) from error


@dataclass(frozen=True)
class Resumed:
    """What :func:`resume_pending` did: entries whose effect now ran, and those that failed."""

    done: list[int]
    failed: dict[int, str]


def pending(store: Store, *, untouched_since_us: int | None = None) -> list[int]:
    """Sequence numbers of entries whose outside effect has not completed yet; with
    ``untouched_since_us``, only those whose outbox row has not changed since then."""
    query = select(OutboxRow.seq).where(OutboxRow.state == _PENDING)
    if untouched_since_us is not None:
        query = query.where(OutboxRow.updated_us < untouched_since_us)
    with store.read() as conn:
        rows = conn.execute(query.order_by(OutboxRow.seq))
        return [int(seq) for seq in rows.scalars()]


def resume_pending(
    store: Store, effects: Effects, *, untouched_since_us: int | None = None
) -> Resumed:
    """Run again every outside effect left pending (by a crash or a failure), in order.

    ``untouched_since_us``: only rows not changed since then — a periodic retry leaves alone
    an effect that its own caller may be running at this very moment.
    """
    done: list[int] = []
    failed: dict[int, str] = {}
    for seq in pending(store, untouched_since_us=untouched_since_us):
        with store.read() as conn:
            row = conn.execute(
                select(AuditEntryRow.__table__).where(AuditEntryRow.seq == seq)
            ).one()
        entry = entry_from_row(row)
        try:
            _run_outside(store, effects, [entry])
        except EffectFailed as error:
            failed[seq] = str(error.__cause__)
        else:
            done.append(seq)
    return Resumed(done, failed)
