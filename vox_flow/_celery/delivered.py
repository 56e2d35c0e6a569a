"""What a worker's consumer holds: kombu's delivered-but-unacknowledged messages.

kombu's virtual transport keeps every message it delivered and that is not yet acknowledged in
``QoS._delivered`` (delivery tag -> message), on the task consumer's channel. The lease keeper
renews those, and a supervised child reports them in its run slot. An acknowledged message
leaves ``unacked`` on the server at once but stays in ``_delivered`` until kombu's next
delivery flushes it: whoever uses these tags must not bring such a tag back (the lease keeper
renews with ``ZADD XX``; a take-back of it finds nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping


def delivered(consumer: Any) -> Mapping[str, Any]:
    """The live mapping (delivery tag -> kombu message) a Celery consumer's channel holds."""
    held: Mapping[str, Any] = consumer.task_consumer.channel.qos._delivered
    return held


def tags(held: Mapping[str, Any]) -> list[str]:
    """The delivery tags in ``held`` (copied again if the worker changed it meanwhile)."""
    for _ in range(3):
        try:
            return list(held)
        except RuntimeError:  # the dict changed while we copied it
            continue
    return []
