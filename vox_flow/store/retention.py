"""The retention rule of every control-store table, applied by ``vox-flow store prune``.

| table             | rule                                                                |
|-------------------|---------------------------------------------------------------------|
| audit_entries     | forever, unless ``audit_retention_days``: then the oldest entries go, |
|                   | never one whose outside effect is still pending; the head keeps the  |
|                   | last removed hash and Merkle compact range so the rest still verifies |
| audit_checkpoints | forever (small; they are what detects a cut tail)                    |
| audit_keys        | forever (old entries and exports must stay verifiable)               |
| audit_outbox      | ``done`` rows after ``outbox_retention_days``; pending rows never     |
| ops               | after ``oplog_retention_days``, from just before the newest snapshot |
|                   | older than the cut, so ``state_at`` still works for every kept time  |
| op_snapshots      | with the ops they summarise (the base snapshot is kept)              |
| audit_head, op_head | one row each, never removed                                       |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update

from vox_flow.audit import merkle
from vox_flow.store.engine import Store, now_us
from vox_flow.store.rows import (
    AuditEntryRow,
    AuditHeadRow,
    OpRow,
    OpSnapshotRow,
    OutboxRow,
)

if TYPE_CHECKING:
    from vox_flow.config import Settings

_DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class Pruned:
    """How many rows each table lost."""

    audit_entries: int
    audit_outbox: int
    ops: int
    op_snapshots: int


def prune(
    store: Store, settings: Settings, *, now: int | None = None, dry_run: bool = False
) -> Pruned:
    """Apply every table's retention rule once, each table in its own transaction.

    ``dry_run``: the same rules run and count, and every transaction is rolled back.
    """
    now = now_us() if now is None else now
    entries = 0
    if settings.audit_retention_days is not None:
        entries = _prune_audit(store, now - settings.audit_retention_days * _DAY_US, dry_run)
    with store.write(dry_run=dry_run) as conn:
        outbox = conn.execute(
            delete(OutboxRow).where(
                OutboxRow.state == "done",
                OutboxRow.updated_us < now - settings.outbox_retention_days * _DAY_US,
            )
        ).rowcount
    ops, snapshots = _prune_ops(store, now - settings.oplog_retention_days * _DAY_US, dry_run)
    return Pruned(entries, outbox, ops, snapshots)


def _prune_audit(store: Store, cutoff: int, dry_run: bool) -> int:
    with store.write(dry_run=dry_run) as conn:
        head = conn.execute(
            select(AuditHeadRow.__table__).where(AuditHeadRow.id == 1).with_for_update()
        ).one()
        last = conn.execute(
            select(func.max(AuditEntryRow.seq)).where(AuditEntryRow.time_us < cutoff)
        ).scalar_one()
        pending = conn.execute(
            select(func.min(OutboxRow.seq)).where(OutboxRow.state == "pending")
        ).scalar_one()
        if last is None:
            return 0
        if pending is not None:
            last = min(last, pending - 1)
        if last <= head.base_size:
            return 0
        rows = conn.execute(
            select(AuditEntryRow.seq, AuditEntryRow.entry_hash)
            .where(AuditEntryRow.seq > head.base_size, AuditEntryRow.seq <= last)
            .order_by(AuditEntryRow.seq)
        ).all()
        base = merkle.CompactRange.from_bytes(head.base_size, head.base_frontier)
        for _seq, entry_hash in rows:
            base.append(merkle.leaf_hash(bytes.fromhex(entry_hash)))
        conn.execute(
            update(AuditHeadRow)
            .where(AuditHeadRow.id == 1)
            .values(base_size=last, base_hash=rows[-1][1], base_frontier=base.to_bytes())
        )
        return conn.execute(delete(AuditEntryRow).where(AuditEntryRow.seq <= last)).rowcount


def _prune_ops(store: Store, cutoff: int, dry_run: bool) -> tuple[int, int]:
    with store.write(dry_run=dry_run) as conn:
        keep = conn.execute(
            select(func.max(OpSnapshotRow.op_seq)).where(OpSnapshotRow.time_us < cutoff)
        ).scalar_one()
        if keep is None:
            return 0, 0
        ops = conn.execute(delete(OpRow).where(OpRow.seq <= keep)).rowcount
        snapshots = conn.execute(delete(OpSnapshotRow).where(OpSnapshotRow.op_seq < keep)).rowcount
        return ops, snapshots
