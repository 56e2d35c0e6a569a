"""The actions seam: no entry without its effect, no effect without its entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select

from tests.unit.conftest_store import sqlite_store
from vox_flow.actions.perform import (
    Action,
    EffectFailed,
    Effects,
    pending,
    perform,
    perform_many,
    resume_pending,
)
from vox_flow.audit.keys import Signer
from vox_flow.audit.log import AuditLog
from vox_flow.audit.verify import verify_store
from vox_flow.contracts.audit import AuditEntry
from vox_flow.store import Store
from vox_flow.store.rows import OutboxRow

SIGNER = Signer.generate("control")


def _store(tmp_path: Path) -> Store:
    store = sqlite_store(tmp_path)
    AuditLog(store).register(SIGNER)
    return store


def test_in_store_effect_commits_with_its_entry(tmp_path: Path) -> None:
    store, effects = _store(tmp_path), Effects()

    @effects.in_store("budget.set")
    def _set(conn: Connection, entry: AuditEntry) -> None:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS budgets (v TEXT)")
        conn.exec_driver_sql("INSERT INTO budgets VALUES (?)", (entry.payload,))

    entry = perform(store, SIGNER, effects, actor="ann", action="budget.set", target="team-a",
                    reason="quarter", payload={"eur": 10})  # fmt: skip
    assert entry.payload_data() == {"eur": 10}
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT v FROM budgets").scalar_one() == '{"eur":10}'


def test_failing_in_store_effect_leaves_no_entry(tmp_path: Path) -> None:
    store, effects = _store(tmp_path), Effects()

    @effects.in_store("node.kill")
    def _boom(conn: Connection, entry: AuditEntry) -> None:
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        perform(store, SIGNER, effects, actor="a", action="node.kill", target="n", reason="r")
    assert AuditLog(store).head().size == 0


def test_outside_effect_runs_after_commit_and_is_marked_done(tmp_path: Path) -> None:
    store, effects = _store(tmp_path), Effects()
    seen: list[tuple[int, Any]] = []

    @effects.outside("dlq.purge")
    def _purge(entry: AuditEntry) -> None:
        assert AuditLog(store).head().size == entry.seq  # the entry is already committed
        seen.append((entry.seq, entry.payload_data()))

    perform(store, SIGNER, effects, actor="a", action="dlq.purge", target="q", reason="r",
            payload={"ids": ["x"]})  # fmt: skip
    assert seen == [(1, {"ids": ["x"]})] and pending(store) == []


def test_crashed_outside_effect_is_resumed(tmp_path: Path) -> None:
    store, effects = _store(tmp_path), Effects()
    calls: list[int] = []
    down = True

    @effects.outside("schedule.pause")
    def _pause(entry: AuditEntry) -> None:
        calls.append(entry.seq)
        if down:
            raise ConnectionError("redis is down")

    with pytest.raises(EffectFailed) as failed:
        perform(store, SIGNER, effects, actor="a", action="schedule.pause", target="s1",
                reason="r")  # fmt: skip
    assert failed.value.entry.seq == 1 and pending(store) == [1]
    still = resume_pending(store, effects)
    assert still.done == [] and "redis is down" in still.failed[1]
    down = False
    # A fresh registry, as after a restart: effects are found again by action name.
    assert resume_pending(store, effects).done == [1]
    assert pending(store) == [] and calls == [1, 1, 1]
    assert verify_store(store).ok


def test_batch_stops_at_the_first_failing_effect(tmp_path: Path) -> None:
    """Effects run in entry order; one that fails leaves itself and every later one pending
    (the later ones not run), and the ones before it done: resume then goes on in order."""
    store, effects = _store(tmp_path), Effects()
    calls: list[str] = []

    @effects.outside("dlq.purge")
    def _purge(entry: AuditEntry) -> None:
        calls.append(entry.target)
        if entry.target == "b" and len(calls) < 3:
            raise ConnectionError("redis is down")

    actions = [Action("a", "dlq.purge", t, "r") for t in ("a", "b", "c")]
    with pytest.raises(EffectFailed) as failed:
        perform_many(store, SIGNER, effects, actions)
    assert failed.value.entry.target == "b" and calls == ["a", "b"]
    with store.read() as conn:
        rows = conn.execute(select(OutboxRow.seq, OutboxRow.state, OutboxRow.attempts,
                                   OutboxRow.last_error).order_by(OutboxRow.seq)).all()  # fmt: skip
    assert [tuple(r) for r in rows] == [
        (1, "done", 1, None),
        (2, "pending", 1, "ConnectionError: redis is down"),
        (3, "pending", 0, None),
    ]
    assert resume_pending(store, effects).done == [2, 3]
    assert calls == ["a", "b", "b", "c"] and pending(store) == []


def test_an_action_name_takes_one_effect() -> None:
    effects = Effects()
    effects.outside("x")(lambda entry: None)
    with pytest.raises(ValueError, match="already registered"):
        effects.in_store("x")(lambda conn, entry: None)


def test_registries_combine_and_refuse_a_second_effect_for_one_action() -> None:
    from vox_flow.actions.perform import Effects

    first, second = Effects(), Effects()
    first.outside("a.one")(lambda entry: None)
    second.outside("a.two")(lambda entry: None)
    combined = Effects().include(first).include(second)
    assert combined.outside_effect("a.one") is first.outside_effect("a.one")
    assert combined.outside_effect("a.two") is second.outside_effect("a.two")
    with pytest.raises(ValueError, match=r"already registered for 'a\.one'"):
        combined.include(first)
