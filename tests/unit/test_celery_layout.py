"""kombu's Redis layout as vox_flow reads it, the worker's delivered view, and the payload
inside a raw message."""

from __future__ import annotations

import base64
import json
import time
from types import SimpleNamespace

import pytest
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.redis import Channel

from vox_flow._celery.delivered import delivered, tags
from vox_flow._celery.layout import RedisLayout, decode_payload, layout
from vox_flow.app import create_app
from vox_flow.application import VoxFlow
from vox_flow.config import Settings


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


# On a real kombu Redis channel (the session's private server): the names the layout reads
# exist, and kombu really keeps queues and reserved messages where the layout says.

OPTIONS = {
    "global_keyprefix": "t1:",
    "unacked_key": "held",
    "unacked_index_key": "held_index",
    "sep": ":",
    "priority_steps": [0, 4, 8],
}


def _app(redis_url: str, **options: object) -> VoxFlow:
    app = create_app(Settings(broker_url=redis_url))
    app.conf.broker_transport_options.update(options)
    return app


def test_layout_reads_a_real_channel_built_with_transport_options(redis_url: str) -> None:
    assert layout(_app(redis_url, **OPTIONS)) == RedisLayout(
        prefix="t1:",
        unacked="t1:held",
        unacked_index="t1:held_index",
        sep=":",
        priority_steps=(0, 4, 8),
    )
    assert layout(_app(redis_url)) == RedisLayout(
        prefix="",
        unacked="unacked",
        unacked_index="unacked_index",
        sep="\x06\x16",
        priority_steps=(0, 3, 6, 9),
    )


@pytest.mark.parametrize("options", [{}, OPTIONS], ids=["defaults", "options"])
def test_kombu_keeps_queues_and_reserved_messages_where_the_layout_says(
    redis_url: str, options: dict[str, object]
) -> None:
    app = _app(redis_url, **options)
    where = layout(app)
    server = redis.Redis.from_url(redis_url)
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        producer = connection.Producer(channel)
        for priority in range(10):
            producer.publish({"p": priority}, routing_key="q", priority=priority)
            assert server.llen(where.queue("q", priority)) == 1, priority
            server.delete(where.queue("q", priority))
        producer.publish({"p": 0}, routing_key="q")
        message = channel.basic_get("q", no_ack=False)  # reserve it, as a worker's fetch does
        assert message is not None
        tag = message.delivery_tag
        assert server.hexists(where.unacked, tag)
        score = server.zscore(where.unacked_index, tag)
        assert score is not None and abs(score - time.time()) < 5  # the lease starts now
        # What the lease keeper renews: what the task consumer's channel delivered, unacked.
        consumer = SimpleNamespace(task_consumer=app.amqp.TaskConsumer(channel, queues=[]))
        held = delivered(consumer)
        assert isinstance(channel.qos, kombu_redis.QoS)  # vox_flow's transport subclasses it
        assert held is channel.qos._delivered and tags(held) == [tag]
        message.ack()  # gone from the server at once (from ``held`` at kombu's next flush)
        assert (
            not server.hexists(where.unacked, tag)
            and server.zscore(where.unacked_index, tag) is None
        )
