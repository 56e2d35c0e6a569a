"""Composition of typed tasks: chains, fan-out groups and fan-in, type-checked when defined.

    flow = chain(fetch.s(Url(url="...")), parse.s(), group(score_a.s(), score_b.s()), best.s())
    handle = flow.submit()          # a TaskHandle of the last step's output model

A step's output must fit the next step's input; a fan-in step's input model has one field,
a list, whose items must fit each member's output. A mismatch raises WorkflowTypeError when
the workflow is built, naming the steps, the models and the field — not when it runs.
Running uses Celery's canvas (chain, group, chord), so Flower shows the usual task tree.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import chain as celery_chain
from celery import group as celery_group
from pydantic import BaseModel

from vox_flow.errors import WorkflowTypeError
from vox_flow.handle import TaskHandle
from vox_flow.tasks import Step

if typing.TYPE_CHECKING:
    from celery.canvas import Signature

__all__ = ["Group", "Step", "Workflow", "chain", "group", "mismatch"]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


def mismatch(produced: type[BaseModel], expected: type[BaseModel]) -> str | None:
    """Why ``produced`` cannot feed a step expecting ``expected`` (None when it can).

    It can when it is the same model or a subclass, or when every field ``expected`` requires
    is in ``produced`` with the same type (and every optional one it has, too).
    """
    if issubclass(produced, expected):
        return None
    have = produced.model_fields
    for name, field in expected.model_fields.items():
        if name not in have:
            if field.is_required():
                return f"field {name!r} is required by {expected.__name__} but missing"
            continue
        if have[name].annotation != field.annotation:
            return (
                f"field {name!r} is {have[name].annotation!r} in {produced.__name__} "
                f"but {field.annotation!r} in {expected.__name__}"
            )
    return None


@dataclass(frozen=True)
class Group:
    """Fan-out: steps that run in parallel; the next step (if any) is their fan-in."""

    steps: tuple[Step[Any, Any], ...]

    def signature(self) -> Signature:
        return celery_group([step.signature() for step in self.steps])

    def __str__(self) -> str:
        return "group(" + ", ".join(str(s) for s in self.steps) + ")"


Part = Step[Any, Any] | Group


def group(*steps: Step[Any, Any]) -> Group:
    """Steps that run in parallel: all with their own payload, or all fed by the step before."""
    if not steps:
        raise WorkflowTypeError("group: needs at least one step")
    fed = {step.payload is None for step in steps}
    if len(fed) > 1:
        raise WorkflowTypeError("group: give every step a payload, or none (fed by the last step)")
    return Group(tuple(steps))


def _check_fan_in(members: Group, step: Step[Any, Any], position: int) -> None:
    field = step.task.fan_in_field
    if field is None:
        raise WorkflowTypeError(
            f"step {position} ({step}): after {members} it must take the group's outputs, so its "
            f"input model {step.task.input_model.__name__} needs exactly one field, a list"
        )
    annotation = step.task.input_model.model_fields[field].annotation
    (item,) = typing.get_args(annotation) or (Any,)
    for member in members.steps:
        if isinstance(item, type) and issubclass(item, BaseModel):
            reason = mismatch(member.output_model, item)
            if reason:
                raise WorkflowTypeError(
                    f"step {position} ({step}): output of {member} does not fit "
                    f"{step.task.input_model.__name__}.{field}: {reason}"
                )


def _check(parts: tuple[Part, ...]) -> None:
    for position, (before, after) in enumerate(itertools.pairwise(parts), start=2):
        if isinstance(after, Group):
            if isinstance(before, Group):
                raise WorkflowTypeError(f"step {position}: a group cannot follow a group")
            for member in after.steps:
                if member.payload is not None:
                    raise WorkflowTypeError(
                        f"step {position} ({member}): inside a chain it is fed by the step "
                        "before; give it no payload"
                    )
                reason = mismatch(before.output_model, member.task.input_model)
                if reason:
                    raise WorkflowTypeError(
                        f"step {position} ({member}): output of {before} does not fit: {reason}"
                    )
            continue
        if after.payload is not None:
            raise WorkflowTypeError(
                f"step {position} ({after}): inside a chain it is fed by the step before; "
                "give it no payload"
            )
        if isinstance(before, Group):
            _check_fan_in(before, after, position)
            continue
        reason = mismatch(before.output_model, after.task.input_model)
        if reason:
            raise WorkflowTypeError(
                f"step {position} ({after}): output of {before} "
                f"({before.output_model.__name__}) does not fit its input "
                f"({after.task.input_model.__name__}): {reason}"
            )


class Workflow:
    """A checked chain of steps and groups; ``submit`` runs it."""

    def __init__(self, parts: tuple[Part, ...]) -> None:
        if not parts:
            raise WorkflowTypeError("chain: needs at least one step")
        first = parts[0]
        members = first.steps if isinstance(first, Group) else (first,)
        if any(step.payload is None for step in members):
            raise WorkflowTypeError(f"step 1 ({first}): the first step needs a payload")
        _check(parts)
        self.parts = parts

    def signature(self) -> Signature:
        """Celery's canvas for it (Celery turns a group followed by a step into a chord)."""
        signatures = [part.signature() for part in self.parts]
        return signatures[0] if len(signatures) == 1 else celery_chain(*signatures)

    def submit(self) -> TaskHandle[Any] | list[TaskHandle[Any]]:
        """Enqueue the workflow: the last step's handle, or one per member of a last group."""
        last = self.parts[-1]
        result = self.signature().apply_async()
        if isinstance(last, Group):
            members: list[Any] = result.results  # type: ignore[attr-defined]  # a GroupResult
            return [
                TaskHandle(step.task.app, member.id, step.output_model)
                for step, member in zip(last.steps, members, strict=True)
            ]
        return TaskHandle(last.task.app, result.id, last.output_model)


def chain(*parts: Part) -> Workflow:
    """Steps (and groups) that run one after another, each fed by the last."""
    return Workflow(parts)
