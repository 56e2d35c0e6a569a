"""The kombu internals vox_flow's transport (vox_flow/_celery/transport.py) relies on."""

from __future__ import annotations

import inspect

from kombu.transport import redis as kombu_redis

from vox_flow._celery import transport


def test_every_part_of_kombus_redis_transport_it_uses_exists() -> None:
    assert transport.missing() == []


def test_kombus_brpop_read_delivers_before_it_reserves() -> None:
    # The window the atomic fetch closes: kombu's own read hands the message to the consumer
    # and only then (QoS.append) writes it to ``unacked``. If kombu ever reserved inside
    # BRPOP itself, this transport's override could go.
    source = inspect.getsource(kombu_redis.Channel._brpop_read)
    assert "BRPOP" in source and "_deliver" in source
    assert "hset" in inspect.getsource(kombu_redis.QoS.append)


def test_the_poller_calls_the_channels_brpop_read_through_its_handlers() -> None:
    # The hub reads a reply with chan.handlers['BRPOP'](), bound in Channel.__init__ to
    # self._brpop_read: the subclass's override is what runs.
    assert "'BRPOP': self._brpop_read" in inspect.getsource(kombu_redis.Channel.__init__)
    assert "_brpop_start" in inspect.getsource(kombu_redis.MultiChannelPoller._register_BRPOP)


def test_a_missing_part_is_named() -> None:
    saved = transport.REQUIRED
    try:
        transport.REQUIRED = {"Channel": ("_no_such_method",)}
        assert transport.missing() == ["kombu.transport.redis.Channel._no_such_method"]
    finally:
        transport.REQUIRED = saved
