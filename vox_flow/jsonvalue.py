"""The one definition of a valid JSON value, for every way a value enters vox_flow.

A value is valid when it is, recursively:

- a ``dict`` whose keys are ``str`` and whose values are valid,
- a ``list`` of valid values (not a tuple or a set: they would not come back as they went),
- a ``str`` without surrogate code points (UTF-8 cannot encode a lone surrogate),
- ``True``, ``False`` or ``None``,
- an ``int`` within ``±MAX_SAFE_INT`` (2**53 - 1: the integers every JSON reader, JavaScript's
  included, reads exactly, and the ones RFC 8785 can sign in the audit log),
- a finite ``float`` (NaN and the infinities have no JSON form),

and containers are nested at most ``MAX_DEPTH`` deep (the top-level object counts as one).

``check`` applies it to a Python value; ``dump`` gives a pydantic model's JSON value, checked
(what submit sends and a worker stores: pydantic alone would turn a NaN in an untyped field
into ``null``, silently); ``parse`` reads a JSON text by the same rule (a file, a
``--payload``), refusing what the standard library would otherwise let through: ``NaN`` and
``Infinity`` tokens, numbers that overflow a float, duplicate keys, nesting deep enough for a
RecursionError. All raise ``JsonValueError`` naming the bad part by its path from ``field``,
e.g. ``payload.items[3].x: NaN is not JSON``.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from vox_flow.errors import JsonValueError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_SAFE_INT",
    "JsonValueError",
    "check",
    "dump",
    "parse",
]

MAX_DEPTH = 64
MAX_SAFE_INT = 2**53 - 1
MAX_INT_DIGITS = len(str(MAX_SAFE_INT))  # 16: longer integer literals are refused unread

_SURROGATE = re.compile("[\ud800-\udfff]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# What matters for nesting in a JSON text: strings (skipped whole) and brackets.
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class _Bad(Exception):
    """Raised inside the walk; each container on the way out adds its key to ``trail``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.trail: list[str | int] = []


class _Refused:
    """What ``parse``'s hooks put in place of a token it refuses, so the walk names its path."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def check(value: Any, *, field: str) -> None:
    """Return if ``value`` is valid JSON (the rule above); else raise JsonValueError.

    The error's ``field`` is ``field`` followed by the path to the bad part.
    """
    try:
        _walk(value, 0)
    except _Bad as bad:
        raise JsonValueError(_path(field, bad.trail), bad.reason) from None


def dump(model: BaseModel, *, field: str) -> dict[str, Any]:
    """``model.model_dump(mode="json")``, if that is valid JSON by the rule above; else
    JsonValueError naming the field (from ``field``) that pydantic could not serialize, or
    that holds a NaN or an infinity (which pydantic turns into ``null`` in untyped fields).
    """
    try:
        data: dict[str, Any] = model.model_dump(mode="json")
    except (ValueError, TypeError, RecursionError) as exc:  # PydanticSerializationError too
        raise _unserializable(model, field, exc) from None
    try:
        if _walk(data, 0):
            _check_nones(model, data)
    except _Bad as bad:
        raise JsonValueError(_path(field, bad.trail), bad.reason) from None
    return data


def parse(text: str, *, field: str) -> Any:
    """The value of the JSON ``text``, if it is valid by the rule above; else JsonValueError.

    Syntax errors name the line and column; refused values (NaN, a duplicate key, an integer
    beyond ``MAX_SAFE_INT``...) name their path from ``field``.
    """
    if not isinstance(text, str):
        raise TypeError(f"{field}: parse takes a str, not {type(text).__name__}")
    _check_nesting(text, field)
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
            object_pairs_hook=_object,
        )
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise JsonValueError(field, f"not JSON: {exc.msg} at {where}") from None
    except RecursionError:  # not expected after _check_nesting; never let it out as a traceback
        raise JsonValueError(field, f"nested deeper than {MAX_DEPTH} levels") from None
    check(value, field=field)
    return value


def _walk(value: Any, depth: int) -> bool:
    """Raise _Bad at the first invalid part of ``value``; return whether it holds a None."""
    # Exact types first: the common case costs one lookup per value.
    kind = type(value)
    if kind is str:
        _check_text(value)
    elif kind is dict or kind is list:
        return _walk_container(value, depth + 1)
    elif value is None:
        return True
    elif kind is bool:
        pass
    elif kind is int:
        _check_int(value)
    elif kind is float:
        _check_float(value)
    elif kind is _Refused:
        raise _Bad(value.reason)
    # Subclasses (str- and int-based enums...) encode as their base type does.
    elif isinstance(value, str):
        _check_text(value)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        _check_int(value)
    elif isinstance(value, float):
        _check_float(value)
    elif isinstance(value, (dict, list)):
        return _walk_container(value, depth + 1)
    else:
        raise _Bad(f"a {kind.__name__} is not a JSON value")
    return False


def _walk_container(value: dict[Any, Any] | list[Any], depth: int) -> bool:
    if depth > MAX_DEPTH:
        raise _Bad(f"nested deeper than {MAX_DEPTH} levels")
    saw_none = False
    if isinstance(value, list):
        for index, item in enumerate(value):
            try:
                saw_none = _walk(item, depth) or saw_none
            except _Bad as bad:
                bad.trail.append(index)
                raise
        return saw_none
    for key, item in value.items():
        if not isinstance(key, str):
            raise _Bad(f"key {key!r:.40} ({type(key).__name__}) is not a string; JSON keys are")
        try:
            _check_text(key)
            saw_none = _walk(item, depth) or saw_none
        except _Bad as bad:
            bad.trail.append(key)
            raise
    return saw_none


def _check_nones(model: BaseModel, data: dict[str, Any]) -> None:
    """Raise _Bad where a None in ``data`` (the model's JSON dump) was a NaN or an infinity."""
    for key, dumped in data.items():
        if dumped is None or isinstance(dumped, (dict, list)):
            value = getattr(model, key, None)
            if value is not None:
                try:
                    _walk_floats(value, 1)
                except _Bad as bad:
                    bad.trail.append(key)
                    raise


def _walk_floats(value: Any, depth: int) -> None:
    """Raise _Bad at the first NaN or infinity in a model's values (any other type passes: the
    JSON dump has been checked)."""
    if isinstance(value, float):
        _check_float(value)
        return
    if depth > MAX_DEPTH:
        return  # the JSON dump, as deep, has been refused already
    items = _children(value)
    if items is None:
        return
    for key, item in items:
        try:
            _walk_floats(item, depth + 1)
        except _Bad as bad:
            bad.trail.append(key)
            raise


def _children(value: Any) -> Iterator[tuple[str | int, Any]] | None:
    """(name or index, value) of each part of a model, dict or collection; None for a leaf."""
    if isinstance(value, BaseModel):
        return ((name, getattr(value, name, None)) for name in type(value).model_fields)
    if isinstance(value, dict):
        return ((str(key), item) for key, item in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return enumerate(value)
    return None


def _unserializable(model: BaseModel, field: str, exc: BaseException) -> JsonValueError:
    """The error naming the part of ``model`` that pydantic failed to serialize with ``exc``."""
    try:
        _find_unserializable(model, 1)  # the model is the top-level object
    except _Bad as bad:
        return JsonValueError(_path(field, bad.trail), bad.reason)
    return JsonValueError(field, f"cannot be serialized to JSON: {exc}")


def _find_unserializable(value: Any, depth: int) -> None:
    """Raise _Bad at the first part of ``value`` (at nesting ``depth``) that has no JSON form."""
    items = _children(value)
    if items is not None and depth > MAX_DEPTH:
        raise _Bad(f"nested deeper than {MAX_DEPTH} levels")
    if items is None:
        try:
            to_jsonable_python(value)
        except (ValueError, TypeError) as exc:
            raise _Bad(f"a {type(value).__name__} is not a JSON value ({exc})") from None
        return
    for key, item in items:
        try:
            _find_unserializable(item, depth + 1)
        except _Bad as bad:
            bad.trail.append(key)
            raise


def _check_text(text: str) -> None:
    if not text.isascii() and (found := _SURROGATE.search(text)):
        raise _Bad(
            f"lone surrogate U+{ord(found.group()):04X} at character {found.start()} "
            "is not valid Unicode text"
        )


def _check_int(number: int) -> None:
    if not -MAX_SAFE_INT <= number <= MAX_SAFE_INT:
        # A huge int has no cheap (nor, past 4,300 digits, allowed) decimal form.
        shown = str(number) if number.bit_length() <= 128 else f"of {number.bit_length()} bits"
        raise _Bad(f"integer {shown} is outside ±{MAX_SAFE_INT} (2**53 - 1); send it as a string")


def _check_float(number: float) -> None:
    if not math.isfinite(number):
        name = "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
        raise _Bad(f"{name} is not JSON")


def _path(field: str, trail: list[str | int]) -> str:
    """``field`` then the keys from the outside in: ``.name``, ``[3]``, ``["odd key"]``."""
    parts = [field]
    for key in reversed(trail):
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif _NAME.match(key):
            parts.append(f".{key}" if parts != [""] else key)
        else:
            parts.append(f"[{json.dumps(key)}]")
    return "".join(parts)


def _check_nesting(text: str, field: str) -> None:
    """Refuse deep nesting before json.loads recurses into it (and hits a RecursionError)."""
    depth = 0
    for token in _NESTING.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, token.start()) + 1
                column = token.start() - text.rfind("\n", 0, token.start())
                raise JsonValueError(
                    field,
                    f"nested deeper than {MAX_DEPTH} levels at line {line} column {column}",
                )
        elif bracket in "]}":
            depth -= 1


def _refuse_constant(token: str) -> _Refused:
    return _Refused(f"{token} is not JSON")


def _parse_int(literal: str) -> int | _Refused:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:  # refused unread: int() of 4,301 digits raises ValueError
        return _Refused(
            f"integer of {digits} digits is outside ±{MAX_SAFE_INT} (2**53 - 1); "
            "send it as a string"
        )
    return int(literal)


def _parse_float(literal: str) -> float | _Refused:
    number = float(literal)
    if math.isinf(number):
        return _Refused(f"number {literal:.40} is too large for a float")
    return number


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Refused:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            break
        seen.add(key)
    # Refused, not "the last one wins": two readers of the same text could see two values.
    return _Refused(f"duplicate key {json.dumps(key)}")
