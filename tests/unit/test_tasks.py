"""What typed_task accepts when a module is imported, and what it refuses."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from vox_flow.app import create_app
from vox_flow.config import Settings


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
