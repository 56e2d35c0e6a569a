"""vox_flow's kombu transport (vox_flow/_celery/transport.py) on a real Redis server.

Each property is checked against kombu's own Redis transport too where kombu lacks it, so the
test shows the defect it guards against: a message lost between BRPOP and its reservation, a
redelivery that shares its delivery tag with the delivery before it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from vox_flow._celery.transport import Transport
from vox_flow.app import create_app, transport_for
from vox_flow.broker.server import RedisServer
from vox_flow.config import Settings
from vox_flow.keyspace import UNREADABLE

QUEUE = "transport-test"
KOMBU = "redis"
VOX_FLOW = "vox_flow._celery.transport:Transport"


def connection(url: str, transport: str = VOX_FLOW, **options: Any) -> Connection:
    return Connection(url, transport=transport, transport_options=options)


def publish(conn: Connection, body: Any, queue: str = QUEUE, **kwargs: Any) -> None:
    Producer(conn.default_channel).publish(
        body, routing_key=queue, declare=[Queue(queue, Exchange(queue), queue)], **kwargs
    )


def consume_one(conn: Connection, timeout: float, queue: str = QUEUE) -> tuple[Any, Any]:
    """Block until one message of ``queue`` arrives (not acknowledged); (body, message)."""
    got: list[Any] = []
    with Consumer(
        conn.default_channel, [Queue(queue)], callbacks=[lambda b, m: got.append((b, m))]
    ):
        deadline = time.monotonic() + timeout
        while not got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no message on {queue} within {timeout}s")
            try:
                conn.drain_events(timeout=min(left, 0.5))
            except TimeoutError:
                continue
    return got[0]


def test_vox_flow_apps_use_the_atomic_transport_for_redis_brokers(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url))
    with app.connection_for_read() as conn:
        assert isinstance(conn.transport, Transport)
    assert transport_for("rediss://example:6380/0") is None
    assert transport_for("amqp://guest@localhost//") is None


# A consumer process that dies right after its fetch returned, before it handled the message:
# with kombu's transport that is after BRPOP and before the reservation is written.
_DIES_AFTER_FETCH = """
import os, sys
from kombu import Connection, Consumer, Queue
from kombu.transport.virtual import base
base.Transport._deliver = lambda self, message, queue: os._exit(7)
conn = Connection(sys.argv[1], transport=sys.argv[2])
with Consumer(conn.default_channel, [Queue(sys.argv[3])], callbacks=[lambda b, m: None]):
    conn.drain_events(timeout=10)
"""


@pytest.mark.parametrize(("transport", "kept"), [(VOX_FLOW, True), (KOMBU, False)])
def test_a_consumer_killed_right_after_its_fetch_leaves_the_message_reserved(
    redis_url: str, transport: str, kept: bool
) -> None:
    server = redis.Redis.from_url(redis_url)
    with connection(redis_url) as conn:
        publish(conn, {"n": 1})
    script = textwrap.dedent(_DIES_AFTER_FETCH)
    done = subprocess.run(
        [sys.executable, "-c", script, redis_url, transport, QUEUE], timeout=30, check=False
    )
    assert done.returncode == 7
    in_queue, reserved = server.llen(QUEUE), server.hlen("unacked")
    if kept:
        assert (in_queue, reserved) == (0, 1), "the message must be reserved, not gone"
        assert server.zcard("unacked_index") == 1
    else:  # kombu's own transport: the message is nowhere (celery/kombu#305)
        assert (in_queue, reserved) == (0, 0)


@pytest.mark.parametrize(("transport", "fresh"), [(VOX_FLOW, True), (KOMBU, False)])
def test_a_redelivery_never_shares_its_delivery_tag_with_an_earlier_one(
    redis_url: str, transport: str, fresh: bool
) -> None:
    server = redis.Redis.from_url(redis_url)
    with connection(redis_url, transport) as conn:
        publish(conn, {"n": 1})
        channel = conn.default_channel
        first = channel.basic_get(QUEUE)
        channel.qos.restore_by_tag(first.delivery_tag)  # what settling a lost run does
        second = channel.basic_get(QUEUE)
        assert second is not None and second.payload == {"n": 1}
        # The late acknowledgement of the first delivery (its worker was dying).
        channel.basic_ack(first.delivery_tag)
        if fresh:
            assert second.delivery_tag != first.delivery_tag
            assert server.hexists("unacked", second.delivery_tag)
        else:  # kombu: the old ack removed the new reservation
            assert second.delivery_tag == first.delivery_tag
            assert server.hlen("unacked") == 0


def test_a_publish_wakes_a_consumer_waiting_on_its_bell(redis_url: str) -> None:
    # With a 5 s server-side wait, a consumer that only polled would take seconds.
    with connection(redis_url, polling_interval=5) as consumer, connection(redis_url) as producer:
        publish(producer, {"warm": True})
        consume_one(consumer, timeout=10)[1].ack()
        for n in range(3):
            got: list[float] = []

            def later(n: int = n, got: list[float] = got) -> None:
                time.sleep(0.5)  # the consumer found the queue empty and waits on its bell
                got.append(time.monotonic())
                publish(producer, {"n": n})

            thread = threading.Thread(target=later)
            thread.start()
            body, message = consume_one(consumer, timeout=10)
            latency = time.monotonic() - got[0]
            thread.join()
            message.ack()
            assert body == {"n": n}
            assert latency < 1.0, f"woken after {latency:.2f}s: the bell did not ring"


def test_a_message_pushed_without_a_bell_is_fetched_within_the_poll_interval(
    redis_url: str,
) -> None:
    with connection(redis_url, transport=KOMBU) as plain, connection(redis_url) as conn:
        time.sleep(0.1)
        started = time.monotonic()
        threading.Timer(0.3, lambda: publish(plain, {"plain": True})).start()
        body, message = consume_one(conn, timeout=10)
        message.ack()
        assert body == {"plain": True}
        assert time.monotonic() - started < 3.0


def test_the_fetch_survives_a_script_cache_flush(redis_url: str) -> None:
    server = redis.Redis.from_url(redis_url)
    with connection(redis_url) as conn:
        publish(conn, {"n": 1})
        consume_one(conn, timeout=10)[1].ack()
        server.script_flush()
        publish(conn, {"n": 2})
        body, message = consume_one(conn, timeout=10)
        message.ack()
        assert body == {"n": 2}
        assert server.hlen("unacked") == 0


def test_an_entry_that_is_not_a_message_is_set_aside_and_the_next_one_runs(
    redis_url: str,
) -> None:
    server = redis.Redis.from_url(redis_url)
    with connection(redis_url) as conn:
        server.lpush(QUEUE, b"not json at all", b'{"no": "properties"}')
        publish(conn, {"n": 1})
        body, message = consume_one(conn, timeout=10)
        message.ack()
    assert body == {"n": 1}
    assert sorted(server.lrange(UNREADABLE, 0, -1)) == [b"not json at all", b'{"no": "properties"}']
    assert server.hlen("unacked") == 0 and server.zcard("unacked_index") == 0


def taken_order(url: str, transport: str) -> list[int]:
    """The priorities of four messages, in the order ``transport`` hands them out."""
    with connection(url, transport) as conn:
        for priority in (9, 0, 6, 3):
            publish(conn, {"p": priority}, priority=priority)
        channel = conn.default_channel
        order = []
        for _ in range(4):
            message = channel.basic_get(QUEUE)
            order.append(message.payload["p"])
            message.ack()
    return order


def test_priorities_are_taken_in_kombus_order(redis_url: str) -> None:
    assert taken_order(redis_url, VOX_FLOW) == taken_order(redis_url, KOMBU)


def test_an_acknowledgement_that_meets_a_broker_restart_is_retried(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        with connection(server.url, ack_retry_seconds=20) as conn:
            publish(conn, {"n": 1})
            message = conn.default_channel.basic_get(QUEUE)
            assert client.hlen("unacked") == 1
            server.stop(signal.SIGKILL)
            threading.Timer(1.0, server.start).start()
            message.ack()  # blocks until the server is back, then removes the reservation
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    finally:
        server.stop()


@pytest.mark.parametrize("batch", [False, True])
def test_submit_rings_the_bell_of_its_queue(redis_url: str, batch: bool) -> None:
    from vox_flow.app import app
    from vox_flow.examples import sample
    from vox_flow.submit import submit, submit_many

    queue = sample.count_words.queue
    with connection(redis_url, polling_interval=5) as consumer:
        with pytest.raises(TimeoutError):
            consume_one(consumer, timeout=0.5, queue=queue)  # now it waits on the bell
        began = time.monotonic()
        if batch:
            submit_many(
                sample.count_words,
                [{"name": "a", "text": "a b"}, {"name": "c", "text": "c"}],
                app=app,
            )
        else:
            submit(sample.count_words, {"name": "a", "text": "a b"}, app=app)
        _, message = consume_one(consumer, timeout=10, queue=queue)
        latency = time.monotonic() - began
        message.ack()
    assert latency < 1.0, f"woken after {latency:.2f}s: submit did not ring the bell"


@pytest.mark.parametrize(("transport", "survives"), [(VOX_FLOW, True), (KOMBU, False)])
def test_closing_a_channel_whose_connection_is_gone_keeps_its_messages_reserved(
    redis_url: str, transport: str, survives: bool
) -> None:
    """What Celery's consumer does when the broker connection broke: it closes the channel,
    and kombu gives the held messages back from inside ``close`` through a connection that is
    no longer there (kombu raises AttributeError, and the worker exits)."""
    server = redis.Redis.from_url(redis_url)
    conn = connection(redis_url, transport)
    publish(conn, {"n": 1})
    channel = conn.default_channel
    channel.basic_get(QUEUE)
    # As Channel.close leaves things before it restores: pools dropped, the connection
    # released, so restoring builds a client from a connection that is gone.
    channel._disconnect_pools()
    channel.__dict__.pop("client", None)
    channel.connection.client = None
    if survives:
        channel.qos.restore_unacked()
        assert server.hlen("unacked") == 1  # still reserved: the lease brings it back
    else:
        with pytest.raises(AttributeError):
            channel.qos.restore_unacked()
        channel.qos._delivered.clear()  # or kombu tries again at exit, and prints the same


def test_an_ack_on_a_channel_closed_meanwhile_leaves_the_message_to_its_lease(
    redis_url: str,
) -> None:
    """Prefork: a pool child finishes a run after the consumer's channel was closed for a
    broken connection and reopened; the late ack must not crash the worker."""
    server = redis.Redis.from_url(redis_url)
    conn = connection(redis_url)
    publish(conn, {"n": 1})
    channel = conn.default_channel
    message = channel.basic_get(QUEUE)
    channel.qos._delivered.clear()  # nothing for close() to give back
    channel.close()
    message.ack()  # logged, not raised
    assert server.hexists("unacked", message.delivery_tag)  # the lease brings it back
    conn.release()
