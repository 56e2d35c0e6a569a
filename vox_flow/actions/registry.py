"""The one registry of audited actions: every effect an operator action can have.

The CLI, the control service's outbox (which runs again what a crash left pending) and the
HTTP API all take their effects from :func:`effects`, so an action recorded by one can be
finished by another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vox_flow.actions.deadletters import deadletter_effects
from vox_flow.actions.perform import Effects
from vox_flow.actions.schedules import schedule_effects

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow


def effects(app: VoxFlow) -> Effects:
    """Every action's effect (``key.retire`` is built into Effects): dead letters, schedules."""
    return Effects().include(deadletter_effects(app)).include(schedule_effects(app))
