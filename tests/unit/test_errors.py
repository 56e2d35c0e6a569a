"""Errors name the field and the reason."""

from __future__ import annotations

import pickle

import pytest
from pydantic import BaseModel, Field, ValidationError

from vox_flow.errors import (
    DeadLettered,
    JsonValueError,
    PayloadError,
    SubmitArgumentError,
    VoxFlowError,
)


class Inner(BaseModel):
    size: int = Field(gt=0)


class Outer(BaseModel):
    name: str
    inner: Inner


def test_payload_error_lists_dotted_field_paths() -> None:
    with pytest.raises(ValidationError) as err:
        Outer.model_validate({"inner": {"size": 0}})
    error = PayloadError.from_validation("t.resize", err.value, index=3)
    assert error.errors == [
        ("name", "Field required"),
        ("inner.size", "Input should be greater than 0"),
    ]
    assert str(error) == (
        "invalid payload for t.resize (batch item 3): name: Field required; "
        "inner.size: Input should be greater than 0"
    )


def test_dead_lettered_survives_celery_s_rebuild_from_its_args() -> None:
    original = DeadLettered("id-1", "Transient", "boom")
    rebuilt = DeadLettered(*original.args)
    assert rebuilt.dead_letter_id == "id-1"
    assert str(rebuilt) == "dead-lettered as id-1: Transient: boom"


def test_submit_argument_error_names_the_argument_and_says_nothing_was_sent() -> None:
    error = SubmitArgumentError("priority", "must be from 0 to 9, got int 10")
    assert (error.argument, error.reason) == ("priority", "must be from 0 to 9, got int 10")
    assert str(error) == (
        "invalid submit argument priority: must be from 0 to 9, got int 10; nothing was enqueued"
    )
    assert isinstance(error, VoxFlowError) and isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert (again.argument, again.reason) == (error.argument, error.reason)


def test_json_value_error_names_the_field() -> None:
    error = JsonValueError("payload.items[3].x", "NaN is not JSON")
    assert str(error) == "payload.items[3].x: NaN is not JSON"
    assert str(JsonValueError("", "NaN is not JSON")) == "NaN is not JSON"
    assert isinstance(error, VoxFlowError) and isinstance(error, ValueError)
