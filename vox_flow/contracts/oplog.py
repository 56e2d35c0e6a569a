"""Wire types of the op-log: ops, and the state of tasks and nodes at an instant."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class OpKind(StrEnum):
    """What an op is about."""

    TASK = "task"
    NODE = "node"


class OpEvent(StrEnum):
    """Every state change the op-log records."""

    SUBMITTED = "submitted"
    RECEIVED = "received"
    STARTED = "started"
    RETRIED = "retried"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    REVOKED = "revoked"
    DEAD_LETTERED = "dead_lettered"
    REPLAYED = "replayed"
    JOINED = "joined"
    LEFT = "left"
    PAUSED = "paused"
    RESUMED = "resumed"
    DRAINING = "draining"
    DRAINED = "drained"


class Op(BaseModel):
    """One task or node state change, as appended to the op-log."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1)
    time: datetime = Field(description="Op-log time: non-decreasing in `seq`.")
    kind: OpKind
    subject: str = Field(description="Task id or node id.")
    event: OpEvent
    data: dict[str, Any] = Field(default_factory=dict, description="e.g. name, node, error.")


class TaskState(BaseModel):
    """A task as it was at some instant."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    name: str | None
    status: str = Field(description="The last event's status, e.g. `started`, `succeeded`.")
    node: str | None
    retries: int
    updated_at: datetime


class NodeState(BaseModel):
    """A node as it was at some instant."""

    model_config = ConfigDict(frozen=True)

    node_id: str
    status: str = Field(description="online, offline, paused, draining or drained.")
    updated_at: datetime


class StateAt(BaseModel):
    """Every open task and every known node at an instant, plus counts of finished tasks."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    op_seq: int = Field(description="The last op applied (0: none).")
    tasks: list[TaskState] = Field(description="Tasks not yet finished at `at`.")
    nodes: list[NodeState]
    finished: dict[str, int] = Field(description="Tasks finished by `at`, by final status.")


WIRE: tuple[type[BaseModel], ...] = (Op, TaskState, NodeState, StateAt)
