"""Where kombu's Redis transport keeps things, read from a live channel.

kombu keeps a queue at each priority step in its own list (``queue``, ``queue<sep>3``, …) and
every reserved, unacknowledged message in the ``unacked`` hash, scored by reservation time in
``unacked_index`` (vox_flow's leases renew those scores). Each name can be changed by a user's
``broker_transport_options`` (``unacked_key``, ``sep``, ``priority_steps``,
``global_keyprefix`` …), so they are read from the channel kombu itself configured, never
assumed. vox_flow's own Redis client does not add kombu's ``global_keyprefix``: every key here
is the one on the server.
"""

from __future__ import annotations

import base64
import json
import weakref
from bisect import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vox_flow.keyspace import BELL

if TYPE_CHECKING:
    from celery import Celery


@dataclass(frozen=True)
class RedisLayout:
    """kombu's Redis key names for one app (server-side names, prefix included)."""

    prefix: str
    unacked: str
    unacked_index: str
    sep: str
    priority_steps: tuple[int, ...]

    @classmethod
    def of_channel(cls, channel: Any) -> RedisLayout:
        """The layout a kombu Redis channel uses."""
        prefix = str(channel.global_keyprefix or "")
        return cls(
            prefix=prefix,
            unacked=prefix + str(channel.unacked_key),
            unacked_index=prefix + str(channel.unacked_index_key),
            sep=str(channel.sep),
            priority_steps=tuple(sorted(int(step) for step in channel.priority_steps)),
        )

    def key(self, name: str) -> str:
        """The server-side name of a key kombu calls ``name``."""
        return self.prefix + name

    def queue(self, routing_key: str, priority: int | None) -> str:
        """The server-side list of ``routing_key`` at ``priority`` (kombu's own rule)."""
        steps = self.priority_steps
        step = steps[max(0, bisect(steps, priority or 0) - 1)]
        name = routing_key if step == 0 else f"{routing_key}{self.sep}{step}"
        return self.prefix + name

    def bell(self, routing_key: str) -> str:
        """The server-side bell of queue ``routing_key``: push to it after putting a message
        on the queue, and consumers waiting on it fetch at once (transport.py)."""
        return self.prefix + BELL + routing_key


# No lock: this is read on every submit, renewal and settle, and a lock held by another
# thread at a fork would deadlock the child. Two threads missing at once both read the
# (same) layout; the last write wins.
_layouts: weakref.WeakKeyDictionary[Celery, RedisLayout] = weakref.WeakKeyDictionary()


def layout(app: Celery) -> RedisLayout:
    """The layout of ``app``'s broker transport (read once per app from a channel)."""
    found = _layouts.get(app)
    if found is None:
        with app.connection_for_write() as connection:
            found = _layouts[app] = RedisLayout.of_channel(connection.default_channel)
    return found


def decode_payload(message: dict[str, Any]) -> dict[str, Any]:
    """The typed payload inside a raw kombu message (protocol 2, JSON, base64 body)."""
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    payload = args[0] if args else {}
    return payload if isinstance(payload, dict) else {"value": payload}
