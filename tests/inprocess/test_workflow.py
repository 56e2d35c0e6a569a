"""Typed workflows: chain, fan-out and fan-in on a real (in-process) worker; type errors when
defined."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tests.inprocess.conftest import StartWorker
from tests.integration import tasks
from vox_flow.app import app
from vox_flow.errors import PayloadError, WorkflowTypeError
from vox_flow.tasks import typed_task
from vox_flow.workflow import chain, group


class Unrelated(BaseModel):
    name: str


def test_chain_and_fan_in_run_with_typed_results(redis_url: str, start_worker: StartWorker) -> None:
    start_worker("w1")
    straight = chain(tasks.echo.s({"id": "a", "value": 1}), tasks.add_one.s(), tasks.add_one.s())
    handle = straight.submit()
    assert not isinstance(handle, list)
    assert handle.result(timeout=30) == tasks.Echo(id="a", value=3)

    fan = chain(
        group(*(tasks.echo.s({"id": str(i), "value": i}) for i in range(5))),
        tasks.total.s(),
    )
    total = fan.submit()
    assert not isinstance(total, list)
    assert total.result(timeout=30) == tasks.Sum(total=10)

    out = chain(tasks.echo.s({"id": "b", "value": 5}), group(tasks.add_one.s(), tasks.add_one.s()))
    members = out.submit()
    assert isinstance(members, list)
    assert [m.result(timeout=30).value for m in members] == [6, 6]


def test_step_types_are_checked_when_the_workflow_is_defined() -> None:
    @typed_task(app, name="tests.unrelated")
    def unrelated(x: Unrelated) -> Unrelated:
        return x

    with pytest.raises(WorkflowTypeError, match=r"step 2 .*'name' is required"):
        chain(tasks.echo.s({"id": "a", "value": 1}), unrelated.s())
    with pytest.raises(WorkflowTypeError, match=r"step 2 .*one field, a list"):
        chain(group(tasks.echo.s({"id": "a", "value": 1})), tasks.add_one.s())
    with pytest.raises(WorkflowTypeError, match="first step needs a payload"):
        chain(tasks.add_one.s(), tasks.add_one.s())
    with pytest.raises(WorkflowTypeError, match="fed by the step before"):
        chain(tasks.echo.s({"id": "a", "value": 1}), tasks.add_one.s({"id": "b", "value": 2}))
    with pytest.raises(PayloadError, match="value"):
        tasks.echo.s({"id": "a", "value": "x"})
