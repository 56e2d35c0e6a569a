"""SQLite commits reach the disk before what they wrote leaves the store.

What a power cut takes cannot be tested without cutting power; what decides it can: the
``PRAGMA synchronous`` level in force when each COMMIT runs (FULL syncs the WAL up to that
commit), and when the log is read out, an fsync of the WAL while the read's snapshot is open.
"""

from __future__ import annotations

import os
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
from vox_flow.store import engine as engine_module

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


def _wal_syncs(monkeypatch: pytest.MonkeyPatch, store: Store) -> list[int]:
    """Record each fsync of the store's WAL file, as the number of connections checked out
    of the pool at that moment (a reader's snapshot is one of them)."""
    seen: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("control.db-wal"):
            seen.append(store.engine.pool.checkedout())  # type: ignore[attr-defined]
        real(fd)

    monkeypatch.setattr(engine_module.os, "fsync", fsync)
    return seen


def test_reading_the_log_out_syncs_what_the_snapshot_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = _store(tmp_path, "before_output")
    syncs = _wal_syncs(monkeypatch, store)
    _act(store, NOTE)
    assert syncs == []  # an in-store action's commit does not wait for the disk
    log = AuditLog(store)
    assert log.head().size == 1
    assert [e.seq for e in log.entries()] == [1]
    log.checkpoints()
    # Each synced while its read snapshot was open: anything it shows was committed
    # before, so it is in the WAL the fsync covers.
    assert syncs == [1, 1, 1]
    store.dispose()


def test_sync_holds_while_a_reader_pins_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wal_checkpoint would copy (and sync) nothing here; the fsync of the WAL still does."""
    store, _ = _store(tmp_path, "before_output")
    syncs = _wal_syncs(monkeypatch, store)
    with store.read() as pinned:
        pinned.exec_driver_sql("SELECT count(*) FROM audit_entries").one()
        for _ in range(3):
            _act(store, NOTE)
        assert AuditLog(store).head().size == 3
    assert len(syncs) == 1
    store.dispose()


def test_other_modes_never_sync_on_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in ("full", "normal"):
        store, _ = _store(tmp_path / mode, mode)
        syncs = _wal_syncs(monkeypatch, store)
        _act(store, NOTE)
        AuditLog(store).head()
        assert syncs == [], mode
        store.dispose()


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="before_output, full, normal"):
        Store(f"sqlite:///{tmp_path / 'control.db'}", sqlite_synchronous="off")
