"""The canonical JSON fast path yields exactly RFC 8785's bytes."""

from __future__ import annotations

import math
from datetime import UTC
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from vox_flow.audit.body import (
    entry_body,
    entry_body_reference,
    time_text,
    us_time_text,
    us_to_datetime,
)
from vox_flow.audit.canonical import canonical

_text = st.text(st.characters(exclude_categories=["Cs"]))
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | _text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_json)
def test_matches_rfc8785(value: object) -> None:
    assert canonical(value) == rfc8785.dumps(value)


def test_known_form() -> None:
    value = {"b": [1, True, None], "a": "é\n\x01", "\u20ac": 0}
    assert canonical(value) == b'{"a":"\xc3\xa9\\n\\u0001","b":[1,true,null],"\xe2\x82\xac":0}'


def test_refuses_non_json() -> None:
    with pytest.raises((TypeError, ValueError, rfc8785.CanonicalizationError)):
        canonical({"x": math.nan})


_fields = st.fixed_dictionaries(
    {
        "seq": st.integers(1, 2**53 - 1),
        "time": st.datetimes(timezones=st.just(UTC)),
        "actor": _text,
        "action": _text,
        "target": _text,
        "reason": _text,
        "payload_digest": _text,
        "prev_hash": _text,
        "key_id": _text,
    }
)


@settings(max_examples=300, deadline=None)
@given(_fields)
def test_entry_body_is_the_canonical_form(fields: dict[str, Any]) -> None:
    """Entry bodies are written out field by field; they must equal RFC 8785's bytes."""
    assert entry_body(**fields) == entry_body_reference(**fields)
    reference = {**fields, "v": 1, "time": time_text(fields["time"])}
    assert entry_body(**fields) == rfc8785.dumps(reference)
    with pytest.raises(rfc8785.IntegerDomainError):  # past JSON's safe integers, as RFC 8785
        entry_body(**{**fields, "seq": 2**53})


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**40), 2**52))
def test_time_text_of_microseconds(us: int) -> None:
    assert us_time_text(us) == time_text(us_to_datetime(us))
