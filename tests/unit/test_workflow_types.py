"""Workflow type checks happen when a workflow is defined, without a broker."""

from __future__ import annotations

from pydantic import BaseModel

from vox_flow.workflow import mismatch


class A(BaseModel):
    id: str
    value: int


class B(BaseModel):
    id: str
    value: int
    note: str = ""


class C(BaseModel):
    value: str


class D(A):
    extra: bool = False


def test_same_model_and_subclass_fit() -> None:
    assert mismatch(A, A) is None
    assert mismatch(D, A) is None


def test_structural_fit_needs_the_required_fields_with_the_same_types() -> None:
    assert mismatch(A, B) is None  # B's extra field is optional
    assert mismatch(B, A) is None  # extra output fields are ignored by the input
    reason = mismatch(A, C)
    assert reason is not None and "'value'" in reason and "int" in reason and "str" in reason
    missing = mismatch(C, A)
    assert missing == "field 'id' is required by A but missing"
