"""SQLite commits reach the disk before what they wrote leaves the store.

What a power cut takes cannot be tested without cutting power; what decides it can: the
``PRAGMA synchronous`` level in force when each COMMIT runs, and the fsyncs of the WAL: after
a commit whose result leaves the store, and while a read's snapshot is open.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event

from tests.unit.conftest_store import NOTE, note_effects
from vox_flow.actions.perform import perform
from vox_flow.audit.keys import Signer
from vox_flow.audit.log import AuditLog
from vox_flow.contracts.audit import AuditEntry
from vox_flow.store import Store
from vox_flow.store import engine as engine_module

SIGNER = Signer.generate("durability")
OUT = "test.outside"


def _store(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, list[str]]:
    """A store in ``mode`` and its trail: ``commit:<synchronous level>`` for each write
    commit, ``sync:<connections checked out>`` for each fsync of its WAL file (a reader's
    snapshot is one such connection), ``effect`` when an outside effect runs."""
    store = Store(f"sqlite:///{tmp_path / 'control.db'}", sqlite_synchronous=mode)
    trail: list[str] = []

    @event.listens_for(store.engine, "commit")
    def _commit(conn: Connection) -> None:  # runs just before the driver's COMMIT
        if conn.get_execution_options().get("vf_write"):
            raw: Any = conn.connection.dbapi_connection
            trail.append(f"commit:{raw.execute('PRAGMA synchronous').fetchone()[0]}")

    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("control.db-wal"):
            trail.append(f"sync:{store.engine.pool.checkedout()}")  # type: ignore[attr-defined]
        real(fd)

    monkeypatch.setattr(engine_module.os, "fsync", fsync)
    AuditLog(store).register(SIGNER)
    trail.clear()
    return store, trail


def _act(store: Store, action: str, trail: list[str]) -> AuditEntry:
    effects = note_effects()
    effects.outside(OUT)(lambda entry: trail.append("effect"))
    return perform(store, SIGNER, effects, actor="op", action=action, target="t", reason="r")


# An outside action: its append commits, then is synced, then the effect runs, then its
# outbox row is marked done (not synced: lost, the idempotent effect runs again).
@pytest.mark.parametrize(
    ("mode", "in_store", "outside", "checkpoint"),
    [
        ("before_output", ["commit:1"], ["commit:1", "sync:0", "effect", "commit:1"],
         ["commit:1", "sync:0"]),
        ("full", ["commit:2"], ["commit:2", "effect", "commit:2"], ["commit:2"]),
        ("normal", ["commit:1"], ["commit:1", "effect", "commit:1"], ["commit:1"]),
    ],
)  # fmt: skip
def test_commits_reach_the_disk_before_what_they_wrote_leaves_the_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    in_store: list[str],
    outside: list[str],
    checkpoint: list[str],
) -> None:
    store, trail = _store(tmp_path, mode, monkeypatch)
    _act(store, NOTE, trail)
    assert trail == in_store
    trail.clear()
    _act(store, OUT, trail)
    assert trail == outside
    trail.clear()
    AuditLog(store).checkpoint(SIGNER)
    assert trail == checkpoint
    store.dispose()


def test_reading_the_log_out_syncs_what_the_snapshot_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, trail = _store(tmp_path, "before_output", monkeypatch)
    _act(store, NOTE, trail)
    assert trail == ["commit:1"]  # an in-store action's commit does not wait for the disk
    trail.clear()
    log = AuditLog(store)
    assert log.head().size == 1
    assert [e.seq for e in log.entries()] == [1]
    log.checkpoints()
    # Each synced while its read snapshot was open: anything it shows was committed
    # before, so it is in the WAL the fsync covers.
    assert trail == ["sync:1", "sync:1", "sync:1"]
    store.dispose()


def test_sync_holds_while_a_reader_pins_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wal_checkpoint would copy (and sync) nothing here; the fsync of the WAL still does."""
    store, trail = _store(tmp_path, "before_output", monkeypatch)
    with store.read() as pinned:
        pinned.exec_driver_sql("SELECT count(*) FROM audit_entries").one()
        for _ in range(3):
            _act(store, NOTE, trail)
        assert AuditLog(store).head().size == 3
    assert trail == ["commit:1", "commit:1", "commit:1", "sync:2"]
    store.dispose()


def test_other_modes_never_sync_on_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in ("full", "normal"):
        store, trail = _store(tmp_path / mode, mode, monkeypatch)
        _act(store, NOTE, trail)
        AuditLog(store).head()
        assert not any(step.startswith("sync") for step in trail), (mode, trail)
        store.dispose()


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="before_output, full, normal"):
        Store(f"sqlite:///{tmp_path / 'control.db'}", sqlite_synchronous="off")
