"""Helpers the store and audit tests import (pytest does not load this file by itself)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vox_flow.actions.perform import Action, Effects, perform_many
from vox_flow.audit.keys import Signer, signature_ok
from vox_flow.audit.log import AuditLog
from vox_flow.store import Store

NOTE = "test.note"


def sqlite_store(path: Path, **kwargs: int) -> Store:
    """A fresh SQLite store in ``path``."""
    return Store(f"sqlite:///{path / 'control.db'}", **kwargs)  # type: ignore[arg-type]


def note_effects() -> Effects:
    """Effects with one in-store action that only records (for filling logs)."""
    effects = Effects()

    @effects.in_store(NOTE)
    def _note(conn: object, entry: object) -> None:
        return None

    return effects


def fill(store: Store, signer: Signer, count: int, batch: int = 500) -> None:
    """Append ``count`` entries, ``batch`` per transaction."""
    effects = note_effects()
    AuditLog(store).register(signer)
    done = 0
    while done < count:
        n = min(batch, count - done)
        actions = [
            Action("alice", NOTE, f"target-{done + i}", "test", {"i": done + i, "s": "é"})
            for i in range(n)
        ]
        perform_many(store, signer, effects, actions)
        done += n


def memo_signature_check() -> Callable[[bytes, bytes, str], bool]:
    """The real Ed25519 check, remembered per exact (key, message, signature).

    Tamper tests verify the same 10^4 untouched entries many times; any changed byte makes
    a new key here, so a tampered entry is always checked for real.
    """
    seen: dict[tuple[bytes, bytes, str], bool] = {}

    def check(public: bytes, message: bytes, signature: str) -> bool:
        key = (public, message, signature)
        if key not in seen:
            seen[key] = signature_ok(public, message, signature)
        return seen[key]

    return check
