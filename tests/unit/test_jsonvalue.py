"""One definition of valid JSON: check (Python values), dump (models), parse (texts)."""

from __future__ import annotations

import enum
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from vox_flow import jsonvalue
from vox_flow.errors import JsonValueError, VoxFlowError
from vox_flow.jsonvalue import MAX_DEPTH, MAX_INT_DIGITS, MAX_SAFE_INT, check, dump, parse


def nested(depth: int) -> Any:
    """``depth`` lists, one inside the other."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def refusal(value: Any, field: str = "payload") -> tuple[str, str]:
    with pytest.raises(JsonValueError) as err:
        check(value, field=field)
    return err.value.field, err.value.reason


class Colour(enum.StrEnum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 3


def test_plain_json_values_pass() -> None:
    check(
        {
            "s": "héllo 😀",
            "n": -MAX_SAFE_INT,
            "m": MAX_SAFE_INT,
            "f": 1.5e300,
            "z": -0.0,
            "b": [True, False, None],
            "e": {},
            "enums": [Colour.RED, Size.BIG],
        },
        field="payload",
    )
    check(nested(MAX_DEPTH), field="payload")


@pytest.mark.parametrize(
    ("value", "field", "reason"),
    [
        ({"items": [1, 2, {"x": float("nan")}]}, "payload.items[2].x", "NaN is not JSON"),
        ({"a": {"b": float("inf")}}, "payload.a.b", "Infinity is not JSON"),
        ({"a": {"b": float("-inf")}}, "payload.a.b", "-Infinity is not JSON"),
        ({"odd key": [0, "\ud800"]}, 'payload["odd key"][1]', "lone surrogate U+D800"),
        ({"k\udfff": 1}, 'payload["k\\udfff"]', "lone surrogate U+DFFF"),
        ({1: "a"}, "payload", "key 1 (int) is not a string"),
        ({"t": (1, 2)}, "payload.t", "a tuple is not a JSON value"),
        ({"s": {1}}, "payload.s", "a set is not a JSON value"),
        ({"o": object()}, "payload.o", "a object is not a JSON value"),
        ({"d": datetime.now(UTC)}, "payload.d", "a datetime is not a JSON value"),
        ({"b": b"x"}, "payload.b", "a bytes is not a JSON value"),
        ({"n": MAX_SAFE_INT + 1}, "payload.n", "integer 9007199254740992 is outside"),
        ({"n": 2**200}, "payload.n", "integer of 201 bits is outside"),
        ({"n": 10**5000}, "payload.n", "integer of 16610 bits is outside"),
        ({"deep": nested(MAX_DEPTH)}, "payload.deep" + "[0]" * (MAX_DEPTH - 1), "nested deeper"),
    ],
)
def test_what_is_not_json_is_refused_by_its_path(value: Any, field: str, reason: str) -> None:
    got_field, got_reason = refusal(value)
    assert got_field == field
    assert got_reason.startswith(reason)


def test_a_cycle_is_refused_as_too_deep_not_a_recursion_error() -> None:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    assert refusal(cycle)[1] == f"nested deeper than {MAX_DEPTH} levels"


def test_the_error_names_the_field_and_survives_pickling() -> None:
    with pytest.raises(JsonValueError) as err:
        check([float("nan")], field="")
    assert (err.value.field, str(err.value)) == ("[0]", "[0]: NaN is not JSON")
    assert isinstance(err.value, VoxFlowError) and isinstance(err.value, ValueError)
    again = pickle.loads(pickle.dumps(err.value))
    assert (again.field, again.reason) == (err.value.field, err.value.reason)
    assert str(refusal(float("nan"), field="")[1]) == "NaN is not JSON"


class Inner(BaseModel):
    extra: Any = None


class Outer(BaseModel):
    name: str = "x"
    when: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    inner: Inner = Inner()
    free: dict[str, Any] = {}
    ratio: float = 0.5


def test_dump_is_the_models_json_value() -> None:
    assert dump(Outer(free={"a": [1, "b"]}), field="payload") == {
        "name": "x",
        "when": "2024-01-01T00:00:00Z",
        "inner": {"extra": None},
        "free": {"a": [1, "b"]},
        "ratio": 0.5,
    }


@pytest.mark.parametrize(
    ("model", "field", "reason"),
    [
        # pydantic alone dumps these NaNs as null: a value changed silently on the way out.
        (Outer(free={"a": [1, float("nan")]}), "payload.free.a[1]", "NaN is not JSON"),
        (Outer(inner=Inner(extra={"x": float("-inf")})), "payload.inner.extra.x", "-Infinity"),
        # ... and this one as the token NaN, which no JSON reader accepts.
        (Outer(ratio=float("nan")), "payload.ratio", "NaN is not JSON"),
        (Outer(name="\ud83d"), "payload.name", "lone surrogate U+D83D"),
        (Outer(free={"o": {"p": object()}}), "payload.free.o.p", "a object is not a JSON value"),
        (Outer(free={"deep": nested(500)}), "payload.free.deep", "nested deeper than 64"),
        (Outer(free={"n": 2**200}), "payload.free.n", "integer of 201 bits is outside"),
    ],
)
def test_dump_refuses_what_is_not_json_by_its_field(
    model: BaseModel, field: str, reason: str
) -> None:
    with pytest.raises(JsonValueError) as err:
        dump(model, field="payload")
    assert err.value.field.startswith(field)
    assert err.value.reason.startswith(reason)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": [1, 2.5, "\\ud83d\\ude00", null, true]}', {"a": [1, 2.5, "😀", None, True]}),
        (str(MAX_SAFE_INT), MAX_SAFE_INT),
        (str(-MAX_SAFE_INT), -MAX_SAFE_INT),
        ("[" * MAX_DEPTH + "]" * MAX_DEPTH, nested(MAX_DEPTH)),
        ('"[[[["', "[[[["),  # brackets inside a string do not nest
        ('{"k": "\\"[{"}', {"k": '"[{'}),
    ],
)
def test_parse_reads_json(text: str, value: Any) -> None:
    assert parse(text, field="--payload") == value


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ('{"a": NaN}', "--payload.a", "NaN is not JSON"),
        ('{"a": [1, -Infinity]}', "--payload.a[1]", "-Infinity is not JSON"),
        ('{"a": Infinity}', "--payload.a", "Infinity is not JSON"),
        ('{"a": 1e400}', "--payload.a", "number 1e400 is too large for a float"),
        ('{"a": {"b": 1, "b": 2}}', "--payload.a", 'duplicate key "b"'),
        ('{"s": "\\ud800"}', "--payload.s", "lone surrogate U+D800"),
        ('{"n": 9007199254740992}', "--payload.n", "integer 9007199254740992 is outside"),
        ('{"n": ' + "1" * 401 + "}", "--payload.n", "integer of 401 digits is outside"),
        ('{"n": -' + "1" * 5000 + "}", "--payload.n", "integer of 5000 digits is outside"),
        ("[" * 500 + "]" * 500, "--payload", f"nested deeper than {MAX_DEPTH} levels at line 1"),
        ("[" * 100_000, "--payload", f"nested deeper than {MAX_DEPTH} levels at line 1"),
        ('{"a": 1,\n "b": }', "--payload", "not JSON: Expecting value at line 2 column 7"),
        ("", "--payload", "not JSON: Expecting value at line 1 column 1"),
    ],
)
def test_parse_refuses_with_the_field_and_the_place(text: str, field: str, reason: str) -> None:
    with pytest.raises(JsonValueError) as err:
        parse(text, field="--payload")
    assert err.value.field == field
    assert err.value.reason.startswith(reason)


def test_the_limits_are_documented_constants() -> None:
    assert (MAX_DEPTH, MAX_SAFE_INT, MAX_INT_DIGITS) == (64, 2**53 - 1, 16)
    assert jsonvalue.__doc__ is not None and "MAX_DEPTH" in jsonvalue.__doc__
