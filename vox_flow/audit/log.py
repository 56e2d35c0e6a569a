"""The audit log: append-only, hash-chained, signed, with an RFC 9162 Merkle tree over it.

Every append locks the single ``audit_head`` row (``SELECT … FOR UPDATE`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), so appends from any number of processes and hosts get one
total order and each entry's ``prev_hash`` is its predecessor's hash: no forks. The entry,
the new head and any periodic checkpoint commit in one transaction, so a crash leaves either
the whole append or none of it.

There is no update or delete path, and appending is not public: entries are written by
:func:`vox_flow.actions.perform.perform`, together with the action they record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select

from vox_flow.audit import merkle
from vox_flow.audit.body import (
    GENESIS,
    body_text,
    checkpoint_body,
    datetime_to_us,
    payload_digest,
    us_time_text,
    us_to_datetime,
)
from vox_flow.audit.canonical import canonical
from vox_flow.contracts.audit import (
    AuditEntry,
    Checkpoint,
    ConsistencyProof,
    InclusionProof,
    PublicKey,
)
from vox_flow.store import Store, driver_sql, now_us, raw_cursor
from vox_flow.store.rows import AuditEntryRow, AuditHeadRow, AuditKeyRow, CheckpointRow

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from vox_flow.audit.keys import Signer


class AuditError(RuntimeError):
    """An append was refused (unknown or retired key, bad payload)."""


@dataclass(frozen=True)
class Draft:
    """An entry before it is sequenced, hashed and signed."""

    actor: str
    action: str
    target: str
    reason: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Head:
    """The log's current size, last entry hash and Merkle tree head."""

    size: int
    head_hash: str
    root_hash: str
    base_size: int  # entries removed by retention; the log starts at base_size + 1
    base_hash: str


# --- rows <-> wire types ----------------------------------------------------------------


def entry_from_row(row: Any) -> AuditEntry:
    """The wire form of an ``audit_entries`` row (no re-validation: the row is typed)."""
    return AuditEntry.model_construct(
        seq=row.seq,
        time=us_to_datetime(row.time_us),
        actor=row.actor,
        action=row.action,
        target=row.target,
        reason=row.reason,
        payload=row.payload,
        payload_digest=row.payload_digest,
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
        key_id=row.key_id,
        signature=row.signature,
    )


def key_from_row(row: Any) -> PublicKey:
    """The wire form of an ``audit_keys`` row."""
    return PublicKey(
        key_id=row.key_id,
        public_key=row.public_key,
        owner=row.owner,
        registered_at=us_to_datetime(row.registered_us),
        retired_at=None if row.retired_us is None else us_to_datetime(row.retired_us),
        retired_after_seq=row.retired_after_seq,
    )


def checkpoint_from_row(row: Any) -> Checkpoint:
    """The wire form of an ``audit_checkpoints`` row."""
    return Checkpoint(
        size=row.size,
        root_hash=row.root_hash,
        head_hash=row.head_hash,
        time=us_to_datetime(row.time_us),
        key_id=row.key_id,
        signature=row.signature,
    )


# --- appending (called by actions.perform only) -----------------------------------------


# The append path runs its three statements on the DB-API cursor of the transaction's own
# connection: SQLAlchemy's per-statement overhead is larger than SQLite's whole statement,
# and the append rate is a product target. Named ``:param`` SQL serves both drivers. The
# head is locked and the signer's key read in one statement (one round trip on PostgreSQL).
_LOCK_HEAD = "SELECT size, head_hash, frontier FROM audit_head WHERE id = 1"
_LOCK_HEAD_AND_KEY = (
    "SELECT h.size, h.head_hash, h.frontier, k.public_key, k.retired_after_seq "
    "FROM audit_head h LEFT JOIN audit_keys k ON k.key_id = :key_id WHERE h.id = 1"
)
_INSERT_ENTRY = (
    "INSERT INTO audit_entries (seq, time_us, actor, action, target, reason, payload, "
    "payload_digest, prev_hash, entry_hash, key_id, signature) VALUES (:seq, :time_us, "
    ":actor, :action, :target, :reason, :payload, :payload_digest, :prev_hash, :entry_hash, "
    ":key_id, :signature)"
)
_INSERT_CHECKPOINT = (
    "INSERT INTO audit_checkpoints (size, root_hash, head_hash, time_us, key_id, signature) "
    "VALUES (:size, :root_hash, :head_hash, :time_us, :key_id, :signature)"
)
_UPDATE_HEAD = (
    "UPDATE audit_head SET size = :size, head_hash = :head, frontier = :frontier WHERE id = 1"
)


@dataclass(frozen=True)
class _HeadState:
    size: int
    head_hash: str
    frontier: bytes


def _lock_head(conn: Connection) -> _HeadState:
    cursor = raw_cursor(conn)
    cursor.execute(driver_sql(conn, _LOCK_HEAD, lock="audit_head"))
    size, head_hash, frontier = cursor.fetchone()
    return _HeadState(size, head_hash, bytes(frontier))


def _lock_head_for(conn: Connection, cursor: Any, signer: Signer) -> _HeadState:
    """Lock the head and check that ``signer``'s key is registered and not retired."""
    cursor.execute(driver_sql(conn, _LOCK_HEAD_AND_KEY, lock="h"), {"key_id": signer.key_id})
    size, head_hash, frontier, public_key, retired_after_seq = cursor.fetchone()
    _check_key(signer, public_key, retired_after_seq)
    return _HeadState(size, head_hash, bytes(frontier))


def _check_key(signer: Signer, public_key: str | None, retired_after_seq: int | None) -> None:
    if public_key is None:
        raise AuditError(f"key {signer.key_id} ({signer.owner}) is not registered")
    if retired_after_seq is not None:
        raise AuditError(f"key {signer.key_id} ({signer.owner}) is retired")
    if public_key != signer.public_key_hex:
        raise AuditError(f"key {signer.key_id} is registered with another key")


def append_entries(
    conn: Connection, signer: Signer, drafts: Sequence[Draft], *, checkpoint_every: int
) -> list[AuditEntry]:
    """Sequence, hash, sign and insert ``drafts`` in the caller's write transaction.

    Writes a signed checkpoint whenever the size crosses a multiple of ``checkpoint_every``.
    Only :mod:`vox_flow.actions.perform` calls this: an entry always comes with its action.
    """
    cursor = raw_cursor(conn)
    head = _lock_head_for(conn, cursor, signer)
    size: int = head.size
    prev: str = head.head_hash
    frontier = merkle.CompactRange.from_bytes(size, head.frontier)
    key_id = signer.key_id
    entries: list[AuditEntry] = []
    rows: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    for draft in drafts:
        try:
            payload = canonical(dict(draft.payload)).decode("utf-8")
        except (TypeError, ValueError) as error:
            raise AuditError(f"payload of {draft.action!r} is not JSON: {error}") from error
        size += 1
        time_us = now_us()
        digest = payload_digest(payload)
        body = body_text(
            size,
            us_time_text(time_us),
            draft.actor,
            draft.action,
            draft.target,
            draft.reason,
            digest,
            prev,
            key_id,
        )
        entry_hash = hashlib.sha256(body).hexdigest()
        row = {
            "seq": size,
            "time_us": time_us,
            "actor": draft.actor,
            "action": draft.action,
            "target": draft.target,
            "reason": draft.reason,
            "payload": payload,
            "payload_digest": digest,
            "prev_hash": prev,
            "entry_hash": entry_hash,
            "key_id": key_id,
            "signature": signer.sign(body),
        }
        rows.append(row)
        entries.append(entry_from_row(_Row(row)))
        frontier.append(merkle.leaf_hash(bytes.fromhex(entry_hash)))
        prev = entry_hash
        if size % checkpoint_every == 0:
            checkpoints.append(_checkpoint_row(signer, size, frontier.root().hex(), prev))
    if not rows:
        return []
    if len(rows) == 1:
        cursor.execute(driver_sql(conn, _INSERT_ENTRY), rows[0])
    else:
        cursor.executemany(driver_sql(conn, _INSERT_ENTRY), rows)
    cursor.execute(
        driver_sql(conn, _UPDATE_HEAD),
        {"size": size, "head": prev, "frontier": frontier.to_bytes()},
    )
    if checkpoints:
        cursor.executemany(driver_sql(conn, _INSERT_CHECKPOINT), checkpoints)
    return entries


class _Row:
    """Attribute access over a dict, so a fresh row converts like a fetched one."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def sign_checkpoint(signer: Signer, size: int, root_hash: str, head_hash: str) -> Checkpoint:
    """A checkpoint of the given tree head, signed now by ``signer``."""
    unsigned = Checkpoint(
        size=size,
        root_hash=root_hash,
        head_hash=head_hash,
        time=us_to_datetime(now_us()),
        key_id=signer.key_id,
        signature="",
    )
    return unsigned.model_copy(update={"signature": signer.sign(checkpoint_body(unsigned))})


def _checkpoint_row(signer: Signer, size: int, root_hash: str, head_hash: str) -> dict[str, Any]:
    cp = sign_checkpoint(signer, size, root_hash, head_hash)
    return {
        "size": cp.size,
        "root_hash": cp.root_hash,
        "head_hash": cp.head_hash,
        "time_us": datetime_to_us(cp.time),
        "key_id": cp.key_id,
        "signature": cp.signature,
    }


# --- reading ----------------------------------------------------------------------------


def read_entries(
    conn: Connection, since_seq: int = 1, until_seq: int | None = None
) -> Iterator[AuditEntry]:
    """Entries from ``since_seq`` (to ``until_seq``) in order, streamed on ``conn``."""
    query = select(AuditEntryRow.__table__).where(AuditEntryRow.seq >= since_seq)
    if until_seq is not None:
        query = query.where(AuditEntryRow.seq <= until_seq)
    result = conn.execution_options(yield_per=5000).execute(query.order_by(AuditEntryRow.seq))
    for row in result:
        yield entry_from_row(row)


def read_keys(conn: Connection) -> list[PublicKey]:
    """Every registered key on ``conn``."""
    rows = conn.execute(select(AuditKeyRow.__table__).order_by(AuditKeyRow.key_id))
    return [key_from_row(row) for row in rows]


def read_checkpoints(conn: Connection) -> list[Checkpoint]:
    """Every stored checkpoint on ``conn``, oldest first."""
    rows = conn.execute(select(CheckpointRow.__table__).order_by(CheckpointRow.id))
    return [checkpoint_from_row(row) for row in rows]


def read_head(conn: Connection) -> Any:
    """The ``audit_head`` row (size, head_hash, frontier, base_*)."""
    return conn.execute(select(AuditHeadRow.__table__).where(AuditHeadRow.id == 1)).one()


class AuditLog:
    """Read access to the audit log, its keys, checkpoints and proofs.

    What it hands out (head, entries, checkpoints, proofs) is synced to disk before it is
    returned (:meth:`Store.sync`, once the read snapshot is open, so nothing the snapshot
    shows escapes it): a reader may keep it elsewhere, and a power cut must not then take
    back entries it has seen (they would look cut off, i.e. tampered with).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def head(self) -> Head:
        """The current size, head hash and Merkle root."""
        with self.store.read() as conn:
            row = conn.execute(select(AuditHeadRow.__table__).where(AuditHeadRow.id == 1)).one()
            self.store.sync()
        root = merkle.CompactRange.from_bytes(row.size, row.frontier).root().hex()
        return Head(row.size, row.head_hash, root, row.base_size, row.base_hash)

    def entries(self, since_seq: int = 1, until_seq: int | None = None) -> Iterator[AuditEntry]:
        """Entries from ``since_seq`` on (up to ``until_seq``), in order, streamed."""
        with self.store.read() as conn:
            conn.execute(select(AuditHeadRow.size)).scalar_one()  # the snapshot starts here
            self.store.sync()
            yield from read_entries(conn, since_seq, until_seq)

    def first_seq_since(self, time_us: int) -> int:
        """The first sequence number appended at or after ``time_us`` (past the end if none)."""
        with self.store.read() as conn:
            seq = conn.execute(
                select(AuditEntryRow.seq)
                .where(AuditEntryRow.time_us >= time_us)
                .order_by(AuditEntryRow.seq)
                .limit(1)
            ).scalar_one_or_none()
            if seq is None:
                size: int = conn.execute(select(AuditHeadRow.size)).scalar_one()
                return size + 1
            return int(seq)

    def keys(self) -> list[PublicKey]:
        """Every registered key, retired ones included."""
        with self.store.read() as conn:
            return read_keys(conn)

    def register(self, signer: Signer) -> PublicKey:
        """Register ``signer``'s public key (idempotent); raises if the id is taken."""
        with self.store.write() as conn:
            row = conn.execute(
                select(AuditKeyRow.__table__).where(AuditKeyRow.key_id == signer.key_id)
            ).one_or_none()
            if row is None:
                values = {
                    "key_id": signer.key_id,
                    "public_key": signer.public_key.hex(),
                    "owner": signer.owner,
                    "registered_us": now_us(),
                    "retired_us": None,
                    "retired_after_seq": None,
                }
                conn.execute(insert(AuditKeyRow), values)
                return key_from_row(_Row(values))
            if row.public_key != signer.public_key.hex():
                raise AuditError(f"key id {signer.key_id} is registered with another key")
            return key_from_row(row)

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, oldest first."""
        with self.store.read() as conn:
            checkpoints = read_checkpoints(conn)
            self.store.sync()
            return checkpoints

    def checkpoint(self, signer: Signer) -> Checkpoint:
        """Sign and store a checkpoint of the current tree head (on demand)."""
        with self.store.write(durable=True) as conn:
            head = _lock_head_for(conn, raw_cursor(conn), signer)
            root = merkle.CompactRange.from_bytes(head.size, head.frontier).root().hex()
            row = _checkpoint_row(signer, head.size, root, head.head_hash)
            conn.execute(insert(CheckpointRow), [row])
        return checkpoint_from_row(_Row(row))

    def _leaves(self, size: int) -> list[bytes]:
        with self.store.read() as conn:
            base = conn.execute(select(AuditHeadRow.base_size)).scalar_one()
            self.store.sync()  # after the snapshot opened: it covers what the proof uses
            if base:
                raise AuditError("proofs need every entry; entries were removed by retention")
            hashes = conn.execute(
                select(AuditEntryRow.entry_hash)
                .where(AuditEntryRow.seq <= size)
                .order_by(AuditEntryRow.seq)
            ).scalars()
            leaves = [merkle.leaf_hash(bytes.fromhex(h)) for h in hashes]
        if len(leaves) != size:
            raise AuditError(f"the log has {len(leaves)} entries, not {size}")
        return leaves

    def inclusion_proof(self, seq: int, tree_size: int) -> InclusionProof:
        """Proof that entry ``seq`` is in the tree of the first ``tree_size`` entries."""
        leaves = self._leaves(tree_size)
        path = merkle.inclusion_proof(seq - 1, leaves)
        with self.store.read() as conn:
            entry_hash = conn.execute(
                select(AuditEntryRow.entry_hash).where(AuditEntryRow.seq == seq)
            ).scalar_one()
        return InclusionProof(
            seq=seq, tree_size=tree_size, entry_hash=entry_hash, path=[p.hex() for p in path]
        )

    def consistency_proof(self, size1: int, size2: int) -> ConsistencyProof:
        """Proof that the tree of ``size1`` entries is a prefix of the tree of ``size2``."""
        path = merkle.consistency_proof(size1, self._leaves(size2))
        return ConsistencyProof(size1=size1, size2=size2, path=[p.hex() for p in path])


def verify_inclusion_proof(proof: InclusionProof, root_hash: str) -> None:
    """Raise :class:`merkle.ProofError` unless ``proof`` ties its entry to ``root_hash``."""
    merkle.verify_inclusion(
        proof.seq - 1,
        proof.tree_size,
        merkle.leaf_hash(bytes.fromhex(proof.entry_hash)),
        [bytes.fromhex(p) for p in proof.path],
        bytes.fromhex(root_hash),
    )


def verify_consistency_proof(proof: ConsistencyProof, root1: str, root2: str) -> None:
    """Raise :class:`merkle.ProofError` unless ``proof`` shows ``root1`` is a prefix."""
    merkle.verify_consistency(
        proof.size1,
        proof.size2,
        bytes.fromhex(root1),
        bytes.fromhex(root2),
        [bytes.fromhex(p) for p in proof.path],
    )


__all__ = ["GENESIS", "AuditError", "AuditLog", "Draft", "Head", "sign_checkpoint"]
