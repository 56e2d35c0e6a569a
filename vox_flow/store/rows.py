"""The control store's tables, as SQLAlchemy rows (never sent on the wire: see contracts).

Times are integer microseconds since the Unix epoch (UTC): exact on every backend, cheap to
compare, and the same value that is hashed and signed.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every control-store row."""


class AuditKeyRow(Base):
    """A registered public key; retired keys stay, so old entries still verify."""

    __tablename__ = "audit_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(255))
    registered_us: Mapped[int] = mapped_column(BigInteger)
    retired_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    retired_after_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditEntryRow(Base):
    """One audit entry; the API has no update or delete path for these rows."""

    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time_us: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(255))
    target: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    payload_digest: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(128))


class AuditHeadRow(Base):
    """The single row every append locks: the log's size, head hash and Merkle state.

    ``frontier`` is the compact range (perfect-subtree roots) of all entries, so tree heads
    cost O(log n). ``base_*`` describe entries removed by retention: the log then starts at
    ``base_size + 1`` and its tree is rebuilt from ``base_frontier``.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    frontier: Mapped[bytes] = mapped_column(LargeBinary)
    base_size: Mapped[int] = mapped_column(BigInteger)
    base_hash: Mapped[str] = mapped_column(String(64))
    base_frontier: Mapped[bytes] = mapped_column(LargeBinary)


class CheckpointRow(Base):
    """A signed tree head, written periodically and on demand."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    size: Mapped[int] = mapped_column(BigInteger, index=True)
    root_hash: Mapped[str] = mapped_column(String(64))
    head_hash: Mapped[str] = mapped_column(String(64))
    time_us: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(128))


class OutboxRow(Base):
    """An effect outside the store, recorded with its audit entry and run after commit."""

    __tablename__ = "audit_outbox"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    action: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending | done
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)


class OpRow(Base):
    """One task or node state change."""

    __tablename__ = "ops"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time_us: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(8))
    subject: Mapped[str] = mapped_column(String(255))
    event: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_ops_time_us_seq", "time_us", "seq"),)


class OpHeadRow(Base):
    """The single row op appends lock: last sequence number and time (kept non-decreasing),
    and the highest fencing token a control-service leader wrote with (None: none yet)."""

    __tablename__ = "op_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    time_us: Mapped[int] = mapped_column(BigInteger)
    fence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class OpSnapshotRow(Base):
    """Tasks and nodes after op ``op_seq``, written every ``oplog_snapshot_every`` ops."""

    __tablename__ = "op_snapshots"

    op_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time_us: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(Text)
