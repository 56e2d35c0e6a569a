"""What an audit entry's hash and signature cover, and the conversions around it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from vox_flow.audit.canonical import canonical

if TYPE_CHECKING:
    from vox_flow.contracts.audit import AuditEntry, Checkpoint

GENESIS = "0" * 64  # prev_hash of entry 1, and head hash of an empty log
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_MAX_SAFE_INT = 2**53 - 1


def us_to_datetime(us: int) -> datetime:
    """Exact UTC datetime of integer microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=us)


def datetime_to_us(when: datetime) -> int:
    """Exact integer microseconds since the epoch (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _ONE_US


def time_text(when: datetime) -> str:
    """The signed text form of a time: ISO 8601, UTC, always six fractional digits."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_second_text: tuple[int | None, str] = (None, "")  # replaced whole: safe across threads


def us_time_text(us: int) -> str:
    """``time_text(us_to_datetime(us))``, formatting each second once (entries share it)."""
    global _second_text
    second, micro = divmod(us, 1_000_000)
    cached = _second_text
    if cached[0] != second:
        text = us_to_datetime(second * 1_000_000).strftime("%Y-%m-%dT%H:%M:%S")
        cached = _second_text = (second, text)
    return f"{cached[1]}.{micro:06d}Z"


def body_text(
    seq: int,
    time: str,
    actor: str,
    action: str,
    target: str,
    reason: str,
    payload_digest: str,
    prev_hash: str,
    key_id: str,
) -> bytes:
    """The canonical JSON bytes an entry's hash and signature cover, ``time`` given as text.

    Written out key by key in RFC 8785 order: the very bytes ``canonical()`` gives for the
    same object (tests/unit/test_canonical.py checks), without building and sorting a dict.
    """
    if type(seq) is not int or not -_MAX_SAFE_INT <= seq <= _MAX_SAFE_INT:
        return canonical(_body_dict(seq, time, actor, action, target, reason, payload_digest,
                                    prev_hash, key_id))  # fmt: skip
    return (
        f'{{"action":{encode_basestring(action)},"actor":{encode_basestring(actor)},'
        f'"key_id":{encode_basestring(key_id)},'
        f'"payload_digest":{encode_basestring(payload_digest)},'
        f'"prev_hash":{encode_basestring(prev_hash)},"reason":{encode_basestring(reason)},'
        f'"seq":{seq},"target":{encode_basestring(target)},"time":{encode_basestring(time)},'
        f'"v":1}}'
    ).encode()


def _body_dict(
    seq: Any,
    time: str,
    actor: str,
    action: str,
    target: str,
    reason: str,
    payload_digest: str,
    prev_hash: str,
    key_id: str,
) -> dict[str, Any]:
    return {
        "v": 1,
        "seq": seq,
        "time": time,
        "actor": actor,
        "action": action,
        "target": target,
        "reason": reason,
        "payload_digest": payload_digest,
        "prev_hash": prev_hash,
        "key_id": key_id,
    }


def entry_body(
    *,
    seq: int,
    time: datetime,
    actor: str,
    action: str,
    target: str,
    reason: str,
    payload_digest: str,
    prev_hash: str,
    key_id: str,
) -> bytes:
    """The canonical JSON bytes an entry's hash and signature cover (all but those two)."""
    return body_text(
        seq, time_text(time), actor, action, target, reason, payload_digest, prev_hash, key_id
    )


def entry_body_reference(**fields: Any) -> bytes:
    """:func:`entry_body` through the general :func:`canonical` (the reference for tests)."""
    fields["time"] = time_text(fields["time"])
    return canonical(_body_dict(**fields))


def body_of(entry: AuditEntry) -> bytes:
    """The signed body of an existing entry, recomputed from its fields."""
    return body_text(
        entry.seq,
        time_text(entry.time),
        entry.actor,
        entry.action,
        entry.target,
        entry.reason,
        entry.payload_digest,
        entry.prev_hash,
        entry.key_id,
    )


def payload_digest(payload_text: str) -> str:
    """Hex SHA-256 of a payload's canonical JSON text."""
    return hashlib.sha256(payload_text.encode("utf-8")).hexdigest()


def checkpoint_body(checkpoint: Checkpoint) -> bytes:
    """The canonical JSON bytes a checkpoint's signature covers."""
    return canonical(
        {
            "v": 1,
            "kind": "checkpoint",
            "size": checkpoint.size,
            "root_hash": checkpoint.root_hash,
            "head_hash": checkpoint.head_hash,
            "time": time_text(checkpoint.time),
            "key_id": checkpoint.key_id,
        }
    )
