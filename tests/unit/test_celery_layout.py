"""kombu's Redis layout as vox_flow reads it, and the payload inside a raw message."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

from kombu.transport.redis import Channel

from vox_flow._celery.layout import RedisLayout, decode_payload


def _defaults(**overrides: object) -> RedisLayout:
    attrs = {
        name: getattr(Channel, name)
        for name in ("global_keyprefix", "unacked_key", "unacked_index_key", "sep")
    }
    attrs["priority_steps"] = Channel.priority_steps
    attrs.update(overrides)
    return RedisLayout.of_channel(SimpleNamespace(**attrs))


def test_queue_follows_kombu_priority_steps() -> None:
    where = _defaults()
    assert where.queue("q", None) == "q"
    assert where.queue("q", 0) == "q"
    assert where.queue("q", 2) == "q"
    assert where.queue("q", 3) == "q\x06\x163"
    assert where.queue("q", 8) == "q\x06\x166"
    assert where.queue("q", 9) == "q\x06\x169"
    assert (where.unacked, where.unacked_index) == ("unacked", "unacked_index")


def test_transport_options_change_every_name() -> None:
    where = _defaults(
        global_keyprefix="app1:",
        unacked_key="held",
        unacked_index_key="held_index",
        sep=":",
        priority_steps=[0, 5],
    )
    assert (where.unacked, where.unacked_index) == ("app1:held", "app1:held_index")
    assert where.queue("q", 4) == "app1:q"
    assert where.queue("q", 7) == "app1:q:5"
    assert where.key("q") == "app1:q"


def test_decode_payload_reads_protocol_2_bodies() -> None:
    body = json.dumps([[{"id": "a", "value": 1}], {}, {}]).encode()
    message = {"body": base64.b64encode(body).decode(), "properties": {"body_encoding": "base64"}}
    assert decode_payload(message) == {"id": "a", "value": 1}
    plain = {"body": json.dumps([[7], {}, {}]), "properties": {}}
    assert decode_payload(plain) == {"value": 7}
