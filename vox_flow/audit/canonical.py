"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) for hashing and signing.

``rfc8785`` is the reference. For the values audit entries actually hold (objects with
BMP keys, strings, safe integers, booleans, null) the standard library's sorted, compact,
non-ASCII-preserving ``json.dumps`` yields the very same bytes at a quarter of the cost, so
those take the fast path; anything else (floats, huge integers, astral keys) goes to
``rfc8785``. tests/unit/test_canonical.py checks the two agree on random values.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

_MAX_SAFE_INT = 2**53 - 1
_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
).encode


def _plain(value: Any) -> bool:
    """True when ``value`` holds only types whose stdlib encoding equals RFC 8785's."""
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    if isinstance(value, dict):
        # Keys sort by UTF-16 code units in RFC 8785 and by code points in Python: the
        # orders agree as long as no key holds a character outside the BMP.
        return all(
            isinstance(k, str) and (k.isascii() or max(map(ord, k)) < 0x10000) and _plain(v)
            for k, v in value.items()
        )
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return False


def canonical(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (raises on non-JSON values)."""
    if _plain(value):
        return _dumps(value).encode("utf-8")
    result: bytes = rfc8785.dumps(value)
    return result


def digest(value: Any) -> str:
    """Hex SHA-256 of the canonical form of ``value``."""
    return hashlib.sha256(canonical(value)).hexdigest()
