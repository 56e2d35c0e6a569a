"""SQLite commits reach the disk before what they wrote leaves the store.

What a power cut takes cannot be tested without cutting power; what decides it can: the
``PRAGMA synchronous`` level in force when each COMMIT runs (FULL syncs the WAL up to that
commit), and whether a sync barrier has moved the commits into the database file.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event

from tests.unit.conftest_store import NOTE, note_effects
from vox_flow.contracts.audit import AuditEntry
from vox_flow.control.actions import perform
from vox_flow.control.audit import AuditLog
from vox_flow.control.keys import Signer
from vox_flow.store import Store

SIGNER = Signer.generate("durability")
OUT = "test.outside"
FULL, NORMAL = 2, 1


def _store(tmp_path: Path, mode: str) -> tuple[Store, list[int]]:
    """A store in ``mode`` and the synchronous level of each of its write commits."""
    store = Store(f"sqlite:///{tmp_path / 'control.db'}", sqlite_synchronous=mode)
    levels: list[int] = []

    @event.listens_for(store.engine, "commit")
    def _commit(conn: Connection) -> None:  # runs just before the driver's COMMIT
        if conn.get_execution_options().get("vf_write"):
            raw: Any = conn.connection.dbapi_connection
            levels.append(raw.execute("PRAGMA synchronous").fetchone()[0])

    AuditLog(store).register(SIGNER)
    return store, levels


def _act(store: Store, action: str) -> AuditEntry:
    effects = note_effects()
    effects.outside(OUT)(lambda entry: None)
    return perform(store, SIGNER, effects, actor="op", action=action, target="t", reason="r")


@pytest.mark.parametrize(
    ("mode", "in_store", "outside", "checkpoint"),
    [
        ("before_output", NORMAL, FULL, FULL),
        ("full", FULL, FULL, FULL),
        ("normal", NORMAL, NORMAL, NORMAL),
    ],
)
def test_commit_level_follows_what_leaves_the_store(
    tmp_path: Path, mode: str, in_store: int, outside: int, checkpoint: int
) -> None:
    store, levels = _store(tmp_path, mode)
    levels.clear()
    _act(store, NOTE)
    assert levels == [in_store]
    levels.clear()
    _act(store, OUT)  # the append, then the outbox row marked done
    assert levels[0] == outside
    levels.clear()
    _act(store, NOTE)  # the connection goes back to the mode's own level
    AuditLog(store).checkpoint(SIGNER)
    assert levels == [in_store, checkpoint]
    store.dispose()


def _entries_in_database_file(tmp_path: Path) -> int:
    """Entries in control.db itself, ignoring its WAL (what a checkpoint has moved there)."""
    copy = tmp_path / "copy"
    copy.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "control.db", copy / "control.db")
    with sqlite3.connect(copy / "control.db") as conn:
        return int(conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0])


def test_reading_the_log_out_syncs_it_first(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, "before_output")
    store.sync()  # the schema and the key, so the copy below can be read
    assert _entries_in_database_file(tmp_path) == 0
    for _ in range(5):
        _act(store, NOTE)
    assert _entries_in_database_file(tmp_path) == 0  # all five only in the WAL
    head = AuditLog(store).head()
    assert head.size == 5
    assert _entries_in_database_file(tmp_path) == 5
    store.dispose()


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="before_output, full, normal"):
        Store(f"sqlite:///{tmp_path / 'control.db'}", sqlite_synchronous="off")
