"""Pure helpers of lost-run settling: kombu's queue naming and the payload inside a message."""

from __future__ import annotations

import base64
import json

from vox_flow.lostrun import decode_payload, queue_key


def test_queue_key_follows_kombu_priority_steps() -> None:
    assert queue_key("q", None) == "q"
    assert queue_key("q", 0) == "q"
    assert queue_key("q", 2) == "q"
    assert queue_key("q", 3) == "q\x06\x163"
    assert queue_key("q", 8) == "q\x06\x166"
    assert queue_key("q", 9) == "q\x06\x169"


def test_decode_payload_reads_protocol_2_bodies() -> None:
    body = json.dumps([[{"id": "a", "value": 1}], {}, {}]).encode()
    message = {"body": base64.b64encode(body).decode(), "properties": {"body_encoding": "base64"}}
    assert decode_payload(message) == {"id": "a", "value": 1}
    plain = {"body": json.dumps([[7], {}, {}]), "properties": {}}
    assert decode_payload(plain) == {"value": 7}
