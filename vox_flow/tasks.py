"""Typed tasks: a function from one pydantic model to another, run as a Celery task.

    @typed_task(app, retry=RetryPolicy(max_attempts=5))
    def resize(job: ResizeJob) -> ResizeResult: ...

The input is validated when submitted (nothing is enqueued when it fails) and again in the
worker; valid means valid for the model and strict JSON (``vox_flow.jsonvalue``), for every
way in: submit, submit_many, workflows, dead-letter replays. The output model is what a
handle's ``result()`` returns.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kombu import Queue
from pydantic import BaseModel, ValidationError

from vox_flow import jsonvalue
from vox_flow.errors import JsonValueError, PayloadError, UnknownTask
from vox_flow.keyspace import QUEUE_PREFIX
from vox_flow.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from celery import Task
    from celery.canvas import Signature

    from vox_flow.application import VoxFlow
    from vox_flow.handle import TaskHandle

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class TypedTask(Generic[In, Out]):
    """A registered typed task: its models, policy, queue and the Celery task that runs it."""

    def __init__(
        self,
        app: VoxFlow,
        fn: Callable[[In], Out],
        *,
        name: str,
        input_model: type[In],
        output_model: type[Out],
        retry: RetryPolicy,
        queue: str,
        time_limit: float | None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.input_model = input_model
        self.output_model = output_model
        self.retry = retry
        self.queue = queue
        self.time_limit = time_limit or app.settings.task_hard_time_limit
        self.fan_in_field = _fan_in_field(input_model)
        run_typed = app.run_typed  # set by create_app: the worker's executor

        def run(task: Task, payload: dict[str, Any]) -> Any:  # type: ignore[type-arg]
            return run_typed(self, task, payload)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        self.celery_task: Task = app.task(  # type: ignore[call-overload,type-arg]
            name=name,
            bind=True,
            base=app.typed_task_base,
            queue=queue,
            time_limit=self.time_limit,
            max_retries=None,  # vox_flow counts attempts itself (see worker/execution.py)
            # A typed task belongs to its app: Celery's default (shared) would copy it into
            # every app finalized later in the process, which then clash by name.
            shared=False,
        )(run)

    def validate(self, payload: In | Mapping[str, Any], index: int | None = None) -> In:
        """The payload as this task's input model; raises PayloadError naming each bad field.

        Valid means valid for the model *and* strict JSON once dumped (``vox_flow.jsonvalue``:
        no NaN or infinity, no lone surrogate, integers within 2**53, nesting within 64...),
        so that what validates here is exactly what goes on the wire.
        """
        return self.wire(payload, index)[0]

    def wire(
        self, payload: In | Mapping[str, Any], index: int | None = None
    ) -> tuple[In, dict[str, Any]]:
        """The payload validated as ``validate`` does, with its JSON value (what is sent)."""
        try:
            if isinstance(payload, BaseModel) and not isinstance(payload, self.input_model):
                payload = jsonvalue.dump(payload, field="")
            model = (
                payload
                if isinstance(payload, self.input_model)
                else self.input_model.model_validate(payload)
            )
            return model, jsonvalue.dump(model, field="")
        except ValidationError as exc:
            raise PayloadError.from_validation(self.name, exc, index) from None
        except JsonValueError as exc:
            raise PayloadError(self.name, [(exc.field or "(payload)", exc.reason)], index) from None

    def __call__(self, payload: In) -> Out:
        """Run the function here, in this process (no broker, no retries)."""
        return self.fn(self.validate(payload))

    def submit(self, payload: In | Mapping[str, Any], **options: Any) -> TaskHandle[Out]:
        """Enqueue one run; see ``vox_flow.submit.submit`` for the options."""
        # The one import that goes up a layer (import-linter ignores it by name): a
        # convenience for ``submit(task, payload)``, resolved at call time.
        from vox_flow.submit import submit

        return submit(self, payload, **options)

    def s(self, payload: In | Mapping[str, Any] | None = None) -> Step[In, Out]:
        """A workflow step; without a payload it takes the previous step's output."""
        return Step(self, None if payload is None else self.validate(payload))

    def __repr__(self) -> str:
        return (
            f"<TypedTask {self.name}: {self.input_model.__name__} -> {self.output_model.__name__}>"
        )


@dataclass(frozen=True)
class Step(Generic[In, Out]):
    """One typed task in a workflow, with its payload (first step) or without (fed by the last)."""

    task: TypedTask[In, Out]
    payload: In | None = None

    @property
    def output_model(self) -> type[Out]:
        return self.task.output_model

    def signature(self) -> Signature:
        if self.payload is None:
            return self.task.celery_task.s()
        return self.task.celery_task.s(self.payload.model_dump(mode="json"))

    def __str__(self) -> str:
        return self.task.name


def _fan_in_field(model: type[BaseModel]) -> str | None:
    """The field a fan-in step's list of outputs goes into: the model's only field, a list."""
    fields = model.model_fields
    if len(fields) != 1:
        return None
    name, info = next(iter(fields.items()))
    return name if typing.get_origin(info.annotation) is list else None


def _models(fn: Callable[..., Any]) -> tuple[type[BaseModel], type[BaseModel]]:
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        # A Celery worker would call it and get a coroutine, never run: refuse it here.
        raise TypeError(f"{fn.__qualname__}: a typed task must be a plain function, not async")
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) != 1:
        raise TypeError(f"{fn.__qualname__}: a typed task takes exactly one argument (a model)")
    arg, ret = hints.get(params[0]), hints.get("return")
    for what, model in (("argument", arg), ("return", ret)):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(
                f"{fn.__qualname__}: the {what} must be annotated with a pydantic model, "
                f"got {model!r}"
            )
    assert isinstance(arg, type) and isinstance(ret, type)
    return arg, ret


def typed_task(
    app: VoxFlow,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    queue: str | None = None,
    time_limit: float | None = None,
) -> Callable[[Callable[[In], Out]], TypedTask[In, Out]]:
    """Register ``fn(model) -> model`` on ``app`` as a typed task with its own queue."""

    def register(fn: Callable[[In], Out]) -> TypedTask[In, Out]:
        input_model, output_model = _models(fn)
        task_name = name or f"{fn.__module__}.{fn.__qualname__}"
        task_queue = queue or QUEUE_PREFIX + task_name
        if task_name in app.typed:
            raise ValueError(f"a typed task named {task_name!r} is already registered")
        app.amqp.queues.select_add(Queue(task_queue))  # a worker consumes every kind's queue
        typed: TypedTask[In, Out] = TypedTask(
            app,
            fn,
            name=task_name,
            input_model=input_model,  # type: ignore[arg-type]
            output_model=output_model,  # type: ignore[arg-type]
            retry=retry or RetryPolicy(),
            queue=task_queue,
            time_limit=time_limit,
        )
        app.typed[task_name] = typed
        return typed

    return register


def lookup(app: VoxFlow, name: str) -> TypedTask[Any, Any]:
    """The typed task registered under ``name`` (its module must have been imported)."""
    try:
        return app.typed[name]
    except KeyError:
        app.loader.import_default_modules()
        if name in app.typed:
            return app.typed[name]
        raise UnknownTask(
            f"no typed task named {name!r}; known: {', '.join(sorted(app.typed)) or 'none'}"
        ) from None
