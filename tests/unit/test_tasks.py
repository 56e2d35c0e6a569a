"""What typed_task accepts when a module is imported, and what it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from vox_flow.app import create_app
from vox_flow.config import Settings
from vox_flow.errors import JsonValueError, PayloadError
from vox_flow.results import decode_result, encode_result


class In(BaseModel):
    n: int


class Out(BaseModel):
    n: int


@pytest.fixture
def typed_task():  # type: ignore[no-untyped-def]
    from vox_flow.tasks import typed_task as register

    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0"))
    return lambda **options: register(app, **options)


def test_a_plain_function_of_models_is_registered(typed_task) -> None:  # type: ignore[no-untyped-def]
    def double(job: In) -> Out:
        return Out(n=job.n * 2)

    task = typed_task(name="t.double")(double)
    assert (task.name, task.queue) == ("t.double", "vf.t.double")
    assert task(In(n=2)) == Out(n=4)


def test_an_async_function_is_refused(typed_task) -> None:  # type: ignore[no-untyped-def]
    async def fetch(job: In) -> Out:
        return Out(n=job.n)

    with pytest.raises(TypeError, match="must be a plain function, not async"):
        typed_task(name="t.fetch")(fetch)


def test_a_function_without_model_annotations_is_refused(typed_task) -> None:  # type: ignore[no-untyped-def]
    def untyped(job: dict) -> dict:  # type: ignore[type-arg]
        return job

    with pytest.raises(TypeError, match="must be annotated with a pydantic model"):
        typed_task(name="t.untyped")(untyped)


class Loose(BaseModel):
    name: str = "x"
    ratio: float = 0.5
    extra: dict[str, Any] = {}


def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        # Accepted before, and sent as the token NaN, which is not JSON.
        ({"ratio": float("nan")}, "ratio", "NaN is not JSON"),
        ({"ratio": float("inf")}, "ratio", "Infinity is not JSON"),
        # Accepted before, and sent as null: the payload changed on the way.
        ({"extra": {"a": [1, float("-inf")]}}, "extra.a[1]", "-Infinity is not JSON"),
        # Accepted before; the send raised pydantic's serialization errors.
        ({"name": "\ud800"}, "name", "lone surrogate U+D800"),
        ({"extra": {"o": object()}}, "extra.o", "a object is not a JSON value"),
        ({"extra": {"deep": _deep(500)}}, "extra.deep", "nested deeper than 64 levels"),
        # Accepted before, though no JSON reader but Python's reads it exactly.
        ({"extra": {"n": 2**200}}, "extra.n", "integer of 201 bits is outside"),
    ],
)
def test_validate_refuses_a_payload_that_is_not_strict_json(
    typed_task, payload: dict[str, Any], field: str, reason: str
) -> None:  # type: ignore[no-untyped-def]
    def keep(job: Loose) -> Out:
        return Out(n=0)

    task = typed_task(name="t.keep")(keep)
    for given in (payload, Loose.model_validate(payload)):  # a dict, and the model itself
        with pytest.raises(PayloadError) as err:
            task.validate(given, index=2)
        [(got_field, got_reason)] = err.value.errors
        assert got_field.startswith(field) and got_reason.startswith(reason)
        assert err.value.index == 2 and err.value.task == "t.keep"
        with pytest.raises(PayloadError):
            task.s(given)  # a workflow's first step: the same check


def test_wire_gives_the_json_that_is_sent(typed_task) -> None:  # type: ignore[no-untyped-def]
    def keep(job: Loose) -> Out:
        return Out(n=0)

    task = typed_task(name="t.keep")(keep)
    model, data = task.wire({"ratio": 2, "extra": {"a": [1, None]}})
    assert isinstance(model, Loose) and model.ratio == 2.0
    assert data == {"name": "x", "ratio": 2.0, "extra": {"a": [1, None]}}


def test_an_output_that_is_not_json_names_its_field() -> None:
    # Before: stored as {"ratio": NaN} (not JSON) or {"extra": {"a": null}} (changed).
    with pytest.raises(JsonValueError) as err:
        encode_result(Loose(ratio=float("nan")), None)
    assert str(err.value) == "output.ratio: NaN is not JSON"
    with pytest.raises(JsonValueError) as err:
        encode_result(Loose(extra={"a": float("inf")}), None)
    assert str(err.value) == "output.extra.a: Infinity is not JSON"
    text = encode_result(Loose(name="é"), "t1")
    assert json.loads(text) == {
        "vf": 1,
        "output": {"name": "é", "ratio": 0.5, "extra": {}},
        "trace_id": "t1",
    }
    assert decode_result(text) == json.loads(text)
