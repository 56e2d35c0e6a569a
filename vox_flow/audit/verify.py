"""Verify an audit log, from the store or from an export, and name its first bad entry.

Every entry is checked: its sequence number (no gap, no reordering), its link to the
previous entry's hash, its key (registered, and not retired before it), its payload digest,
its own hash, and its Ed25519 signature. Then the Merkle tree head is recomputed and
compared with every checkpoint given, which is what detects a cut-off tail.

The checks split in two. What depends on order (sequence, link, key, Merkle tree) runs on
the calling thread over plain row tuples and stops at the first failure. What does not
(digest, hash, signature: nearly all the cost, Ed25519 alone ~75 µs an entry) runs on
chunks of 1,024 entries in worker processes, one per core, each returning the first bad
entry of its chunk. The report is the earliest failure of either kind, and for one entry
the checks keep the order above, so it names exactly what a one-by-one pass would.

Workers are forked, which is safe only in a single-threaded process (the CLI, a script);
a process that runs threads gets a thread pool instead (libsodium releases the GIL, but
the Python around each check does not, so it gains less). Logs of one chunk or less are
checked inline.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vox_flow.audit import export, merkle
from vox_flow.audit.body import GENESIS, body_text, checkpoint_body, time_text, us_time_text
from vox_flow.audit.keys import signature_ok
from vox_flow.audit.log import read_checkpoints, read_head, read_keys
from vox_flow.contracts.audit import AuditEntry, AuditProblem, Checkpoint, PublicKey, VerifyReport
from vox_flow.store import Store, raw_cursor

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import Connection

SignatureCheck = Callable[[bytes, bytes, str], bool]
_CHUNK = 1024
_IN_FLIGHT = 4  # chunks queued per worker: enough to keep it busy, bounded memory

# One entry as the checks see it: (seq, time, actor, action, target, reason, payload,
# payload_digest, prev_hash, entry_hash, key_id, signature). ``time`` is integer
# microseconds (store rows) or the signed text form (entries from an export).
Record = tuple[int, int | str, str, str, str, str, str, str, str, str, str, str]
_ROW_SQL = (
    "SELECT seq, time_us, actor, action, target, reason, payload, payload_digest, "
    "prev_hash, entry_hash, key_id, signature FROM audit_entries WHERE seq >= :since "
    "ORDER BY seq"
)


@dataclass(frozen=True)
class _Key:
    public: bytes
    retired_after_seq: int | None


def _keymap(keys: Iterable[PublicKey]) -> dict[str, _Key]:
    return {k.key_id: _Key(bytes.fromhex(k.public_key), k.retired_after_seq) for k in keys}


def _key_problem(key_id: str, keys: dict[str, _Key], seq: int) -> str | None:
    key = keys.get(key_id)
    if key is None:
        return f"signed by unknown key {key_id}"
    if key.retired_after_seq is not None and seq > key.retired_after_seq:
        return f"signed by key {key_id} after it was retired (after entry {key.retired_after_seq})"
    return None


def check_records(
    records: Sequence[Record], publics: dict[str, bytes], check: SignatureCheck = signature_ok
) -> tuple[int, str] | None:
    """The first of ``records`` whose digest, hash or signature is wrong, and what is.

    The order-free part of verification (a worker's job). Each record's key must be in
    ``publics``: the caller has checked keys already.
    """
    sha256 = hashlib.sha256
    for (
        seq,
        time,
        actor,
        action,
        target,
        reason,
        payload,
        digest,
        prev,
        entry_hash,
        key_id,
        sig,
    ) in records:
        if sha256(payload.encode("utf-8")).hexdigest() != digest:
            return seq, "payload does not match its digest"
        when = time if isinstance(time, str) else us_time_text(time)
        body = body_text(seq, when, actor, action, target, reason, digest, prev, key_id)
        if sha256(body).hexdigest() != entry_hash:
            return seq, "entry_hash does not match the entry's contents"
        if not check(publics[key_id], body, sig):
            return seq, "signature does not verify"
    return None


def _record(entry: AuditEntry) -> Record:
    return (
        entry.seq,
        time_text(entry.time),
        entry.actor,
        entry.action,
        entry.target,
        entry.reason,
        entry.payload,
        entry.payload_digest,
        entry.prev_hash,
        entry.entry_hash,
        entry.key_id,
        entry.signature,
    )


class _Checker:
    """Runs :func:`check_records` on chunks: inline, in worker processes or in threads."""

    def __init__(
        self, publics: dict[str, bytes], check: SignatureCheck, workers: int | None
    ) -> None:
        self.publics, self.check = publics, check
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self.pool: Executor | None = None
        self.pending: deque[Future[tuple[int, str] | None]] = deque()
        self.found: tuple[int, str] | None = None  # earliest failure found so far

    def _start(self) -> Executor:
        # fork: workers start in milliseconds and import nothing. Only in a process with no
        # other thread (a lock held by one would stay locked in the child); the default
        # check only (a custom one, e.g. a test's closure, need not pickle).
        if self.check is signature_ok and threading.active_count() == 1:
            context = multiprocessing.get_context("fork")
            return ProcessPoolExecutor(self.workers, mp_context=context)
        return ThreadPoolExecutor(self.workers)

    def submit(self, chunk: list[Record], *, last: bool = False) -> None:
        """Check ``chunk`` (the last one inline when nothing else is under way)."""
        if self.workers <= 1 or (last and self.pool is None):
            self._note(check_records(chunk, self.publics, self.check))
            return
        if self.pool is None:
            self.pool = self._start()
        self.pending.append(self.pool.submit(check_records, chunk, self.publics, self.check))
        while self.pending and (
            len(self.pending) > _IN_FLIGHT * self.workers or self.pending[0].done()
        ):
            self._note(self.pending.popleft().result())

    def _note(self, bad: tuple[int, str] | None) -> None:
        if bad is not None and (self.found is None or bad[0] < self.found[0]):
            self.found = bad

    def finish(self) -> tuple[int, str] | None:
        """Wait for every chunk; the earliest failure of all."""
        while self.pending:
            self._note(self.pending.popleft().result())
        return self.found

    def close(self) -> None:
        """Stop the workers (cancelling what has not started)."""
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def verify_entries(
    entries: Iterable[AuditEntry],
    keys: Iterable[PublicKey],
    *,
    first_seq: int = 1,
    prev_hash: str = GENESIS,
    base: merkle.CompactRange | None = None,
    checkpoints: Sequence[Checkpoint] = (),
    expected_size: int | None = None,
    workers: int | None = None,
    check_signature: SignatureCheck = signature_ok,
) -> VerifyReport:
    """Verify ``entries`` (which must start at ``first_seq``, chained to ``prev_hash``).

    ``base`` is the compact Merkle range of the entries before ``first_seq`` (empty when the
    log starts at 1); without it no root can be computed and checkpoints are checked by head
    hash only. ``expected_size`` is the size the store's head claims. ``workers``: processes
    (or threads) checking hashes and signatures; default one per core, at most 4.
    """
    return _verify_records(
        map(_record, entries),
        keys,
        first_seq=first_seq,
        prev_hash=prev_hash,
        base=base,
        checkpoints=checkpoints,
        expected_size=expected_size,
        workers=workers,
        check_signature=check_signature,
    )


def _verify_records(
    records: Iterable[Record],
    keys: Iterable[PublicKey],
    *,
    first_seq: int,
    prev_hash: str,
    base: merkle.CompactRange | None,
    checkpoints: Sequence[Checkpoint],
    expected_size: int | None,
    workers: int | None,
    check_signature: SignatureCheck,
) -> VerifyReport:
    keymap = _keymap(keys)
    publics = {key_id: key.public for key_id, key in keymap.items()}
    if base is None and first_seq == 1:
        base = merkle.CompactRange()
    tree = base.copy() if base is not None else None
    wanted = {cp.size for cp in checkpoints}
    at_size: dict[int, tuple[str | None, str]] = {}
    if first_seq - 1 in wanted:
        at_size[first_seq - 1] = (tree.root().hex() if tree else None, prev_hash)
    checker = _Checker(publics, check_signature, workers)
    found: AuditProblem | None = None
    expected, prev = first_seq, prev_hash
    chunk: list[Record] = []
    leaf_hash, fromhex = merkle.leaf_hash, bytes.fromhex
    try:
        for record in records:
            seq, entry_hash, key_id = record[0], record[9], record[10]
            reason = None
            if seq != expected:
                reason = f"expected entry {expected} here, found entry {seq}"
            elif record[8] != prev:
                reason = "prev_hash does not match the previous entry's hash"
            elif (key := keymap.get(key_id)) is None or (
                key.retired_after_seq is not None and seq > key.retired_after_seq
            ):
                reason = _key_problem(key_id, keymap, seq)
            if reason is not None:
                found = AuditProblem(seq=expected, reason=reason)
                break
            if tree is not None:
                try:
                    tree.append(leaf_hash(fromhex(entry_hash)))
                except ValueError:  # not hex: the entry's own checks say what is wrong
                    bad = check_records([record], publics, check_signature)
                    assert bad is not None
                    found = AuditProblem(seq=bad[0], reason=bad[1])
                    break
            chunk.append(record)
            if len(chunk) >= _CHUNK:
                checker.submit(chunk)
                chunk = []
                if checker.found is not None and checker.found[0] < expected:
                    break  # an earlier entry is bad: nothing after it matters
            prev = entry_hash
            if expected in wanted:
                at_size[expected] = (tree.root().hex() if tree else None, prev)
            expected += 1
        if chunk:
            checker.submit(chunk, last=True)
        bad = checker.finish()
    finally:
        checker.close()
    if bad is not None and (found is None or found.seq is None or bad[0] < found.seq):
        found = AuditProblem(seq=bad[0], reason=bad[1])
    last = expected - 1
    if found is None:
        found = _tail_problem(last, expected_size, checkpoints, keymap, at_size, check_signature)
    root = tree.root().hex() if tree is not None and found is None else None
    return VerifyReport(
        ok=found is None,
        first_seq=first_seq,
        entries=last - first_seq + 1,
        head_hash=prev,
        root_hash=root,
        problem=found,
    )


def _tail_problem(
    last: int,
    expected_size: int | None,
    checkpoints: Sequence[Checkpoint],
    keys: dict[str, _Key],
    at_size: dict[int, tuple[str | None, str]],
    check_signature: SignatureCheck,
) -> AuditProblem | None:
    if expected_size is not None and expected_size != last:
        if expected_size > last:
            return AuditProblem(
                seq=last + 1,
                reason=f"missing: the log's head counts {expected_size} entries, "
                f"the log ends at entry {last}",
            )
        return AuditProblem(
            seq=expected_size + 1, reason=f"entry beyond the log's head ({expected_size})"
        )
    for cp in sorted(checkpoints, key=lambda c: c.size):
        problem = checkpoint_problem(cp, keys, check_signature)
        if problem is None and cp.size > last:
            problem = (
                f"missing: checkpoint of {cp.size} entries, the log ends at entry {last}",
                last + 1,
            )
        if problem is None and cp.size in at_size:
            root, head = at_size[cp.size]
            if head != cp.head_hash:
                problem = ("entry hash differs from the checkpoint's head hash", cp.size)
            elif root is not None and root != cp.root_hash:
                problem = ("Merkle root differs from the checkpoint's", cp.size)
        if problem is not None:
            return AuditProblem(seq=problem[1], reason=problem[0])
    return None


def checkpoint_problem(
    cp: Checkpoint, keys: dict[str, _Key], check: SignatureCheck = signature_ok
) -> tuple[str, int | None] | None:
    """What is wrong with a checkpoint's own signature or key (None: nothing)."""
    key_problem = _key_problem(cp.key_id, keys, cp.size)
    if key_problem is not None:
        return f"checkpoint of {cp.size} entries {key_problem}", None
    if not check(keys[cp.key_id].public, checkpoint_body(cp), cp.signature):
        return f"checkpoint of {cp.size} entries: signature does not verify", None
    return None


def verify_checkpoint(cp: Checkpoint, keys: Iterable[PublicKey]) -> str | None:
    """What is wrong with ``cp``'s signature or key, or None when it is sound."""
    problem = checkpoint_problem(cp, _keymap(keys))
    return None if problem is None else problem[0]


def _store_records(conn: Connection, since: int) -> Iterator[Record]:
    """The entries from ``since`` on as plain tuples, streamed (no model per row)."""
    if conn.dialect.name == "sqlite":
        cursor = raw_cursor(conn)
        cursor.execute(_ROW_SQL, {"since": since})
        while rows := cursor.fetchmany(4096):
            yield from rows
        return
    result = conn.execution_options(yield_per=4096).exec_driver_sql(
        _ROW_SQL.replace(":since", "%(since)s"), {"since": since}
    )
    for rows in result.partitions():
        yield from map(tuple, rows)


def verify_store(
    store: Store,
    *,
    checkpoints: Sequence[Checkpoint] = (),
    workers: int | None = None,
) -> VerifyReport:
    """Verify the whole log in ``store`` against its own checkpoints and ``checkpoints``.

    Reads one consistent snapshot, so appends running meanwhile do not disturb it. Syncs
    what the snapshot shows: the report's head hash may be kept elsewhere.
    """
    with store.read() as conn:
        head = read_head(conn)
        store.sync()
        return _verify_records(
            _store_records(conn, head.base_size + 1),
            read_keys(conn),
            first_seq=head.base_size + 1,
            prev_hash=head.base_hash,
            base=merkle.CompactRange.from_bytes(head.base_size, head.base_frontier),
            checkpoints=[*read_checkpoints(conn), *checkpoints],
            expected_size=head.size,
            workers=workers,
            check_signature=signature_ok,
        )


def verify_export(
    path: Path, keys: list[PublicKey], checkpoints: list[Checkpoint] | None = None
) -> VerifyReport:
    """Verify an export offline. An export starting past entry 1 is anchored on its first
    entry's ``prev_hash``; it then has no Merkle root, and checkpoints are checked by
    their head hash."""
    entries = export.read_entries(path)
    first = next(entries, None)
    if first is None:
        return verify_entries([], keys, checkpoints=checkpoints or ())

    def chained() -> Iterator[AuditEntry]:
        yield first
        yield from entries

    return verify_entries(
        chained(),
        keys,
        first_seq=first.seq,
        prev_hash=GENESIS if first.seq == 1 else first.prev_hash,
        checkpoints=checkpoints or (),
    )
