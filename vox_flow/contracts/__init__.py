"""The wire types: every model that crosses a process boundary lives in this package.

Each sub-module lists its wire models in ``WIRE``; ``wire_types()`` gathers them, and
``python -m vox_flow.contracts`` writes their JSON Schemas into ``contracts/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vox_flow.contracts import audit, oplog, schedule, task

if TYPE_CHECKING:
    from pydantic import BaseModel


def wire_types() -> dict[str, type[BaseModel]]:
    """Every wire model by its schema name, in a stable order."""
    models: dict[str, type[BaseModel]] = {}
    for module in (task, schedule, audit, oplog):
        for model in module.WIRE:
            models[model.__name__] = model
    return dict(sorted(models.items()))
