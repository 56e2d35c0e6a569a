"""vox_flow's kombu transport: kombu's Redis transport with an atomic fetch.

kombu's Redis transport takes a message with ``BRPOP`` and only afterwards, in a second round
trip, records it as reserved in its ``unacked`` hash. A process (or the broker) killed between
the two loses the message: it is in no queue and not in ``unacked``, so no lease can bring it
back (celery/celery#7950, celery/kombu#305, #1836). Here one Lua script pops the message and
records it in ``unacked`` and ``unacked_index`` in the same step, so at every instant a message
is in a queue or reserved, never nowhere.

Redis runs no blocking command inside a script, so a consumer cannot *wait* inside the fetch.
Each queue has a *bell* (``keyspace.BELL``), a short list that every publish through this
transport pushes to after the message. A consumer whose fetch found its queues empty blocks
on their bells with ``BRPOP`` (at most ``brpop_timeout``, 1 s) and fetches again when one
rings. The fetch script deletes the bells of queues it found empty, in the same step as it
saw them empty, so a publish made after that always rings anew (no lost wake-up), and rings
the bell again when it leaves messages behind, so a burst wakes every waiting consumer. A
message pushed by a producer that does not ring (plain kombu, ``redis-cli``) is fetched
within ``brpop_timeout``.

Every fetch reserves its message under a fresh delivery tag, never the one it had at publish
or at an earlier delivery: a late acknowledgement of an earlier delivery of the same message
(a run settled as lost, then acknowledged by its dying worker) removes nothing it should not.

Acknowledgements and rejections that meet a broker outage are retried, with backoff, for up
to ``ack_retry_seconds`` (a transport option) before the error is raised: a run that finished
is not run again because its acknowledgement met a blip.

Consumers that take messages without acknowledgement (``no_ack``) keep kombu's own fetch: they
accepted that a message in flight can be lost.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from vox_flow._celery.capture import Commands
from vox_flow.keyspace import BELL, UNREADABLE

log = logging.getLogger(__name__)

# kombu's Redis transport, untyped here: its stubs describe the virtual base classes only, and
# this module uses the Redis ones' private parts (each one checked by versions.py's gate).
_RedisChannel: Any = kombu_redis.Channel
_RedisQoS: Any = kombu_redis.QoS
_RedisTransport: Any = kombu_redis.Transport
_PublishBatch: Any = getattr(kombu_redis, "PublishBatch")  # noqa: B009  (not in the stubs)

# KEYS: unacked, unacked_index, the unreadable list, then n queue lists in the order to try
# them, then the bell of each list's queue. ARGV: delivery tag, reservation time, then the
# routing key of each list (kept with a message whose envelope does not name one).
# Returns {list, message, tag} for the message it reserved ({list, message, ''} for one that is
# not JSON: it goes to the unreadable list, since no worker can run it), or nil when every list
# was empty.
FETCH_LUA = """
local n = (#KEYS - 3) / 2
for i = 1, n do
  local item = redis.call('RPOP', KEYS[3 + i])
  if item then
    local ok, message = pcall(cjson.decode, item)
    if not (ok and type(message) == 'table') then
      redis.call('LPUSH', KEYS[3], item)
      redis.call('LTRIM', KEYS[3], 0, 999)
      return {KEYS[3 + i], item, ''}
    end
    local exchange, routing_key = '', ARGV[2 + i]
    local info = type(message.properties) == 'table' and message.properties.delivery_info
    if type(info) == 'table' then
      if type(info.exchange) == 'string' then exchange = info.exchange end
      if type(info.routing_key) == 'string' then routing_key = info.routing_key end
    end
    redis.call('HSET', KEYS[1], ARGV[1],
      '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
    local bell = KEYS[3 + n + i]
    if redis.call('LLEN', KEYS[3 + i]) > 0 and redis.call('LLEN', bell) == 0 then
      redis.call('LPUSH', bell, '1')
    end
    return {KEYS[3 + i], item, ARGV[1]}
  end
end
for i = 1, n do redis.call('DEL', KEYS[3 + n + i]) end
return false
"""

_FETCH_SHA = hashlib.sha1(FETCH_LUA.encode()).hexdigest()

# What the poller sent last on a channel's BRPOP connection.
_FETCH, _BELL = "fetch", "bell"

ACK_RETRY_SECONDS = 30.0  # default of the ``ack_retry_seconds`` transport option
_BACKOFF_FIRST, _BACKOFF_MAX, _REPORT_EVERY = 0.05, 1.0, 5.0


def bell_name(queue: str) -> str:
    """The bell of ``queue``, as kombu names keys (before its ``global_keyprefix``; see
    ``RedisLayout.bell`` for the server's name)."""
    return BELL + queue


def _retrying(what: str, limit: float, action: Any) -> Any:
    """Run ``action()``; on a broker connection error, again with backoff for ``limit`` s."""
    deadline = time.monotonic() + limit
    delay, reported = _BACKOFF_FIRST, 0.0
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError):
            now = time.monotonic()
            if now >= deadline:
                raise
            if now - reported >= _REPORT_EVERY:
                log.warning("broker unreachable; retrying to %s", what)
                reported = now
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, _BACKOFF_MAX)


class QoS(_RedisQoS):  # type: ignore[misc]
    """kombu's Redis QoS, for messages the fetch script already recorded as reserved."""

    def append(self, message: Any, delivery_tag: str) -> None:
        # The fetch script wrote ``unacked`` and its index with the pop: track it in memory.
        virtual.QoS.append(self, message, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        """Give held messages back to their queues (kombu does it when a channel closes); a
        channel closed because its connection broke cannot, and must not crash the worker
        for it (kombu raises from inside ``close`` then): the messages stay reserved, and
        their lapsing leases bring them back (worker/lease.py)."""
        try:
            super().restore_unacked(client)
        except Exception as exc:  # whatever a broken connection raises here
            log.warning(
                "could not give %d held message(s) back to their queues (%s: %s); their "
                "leases will bring them back",
                len(self._delivered),
                type(exc).__name__,
                exc,
            )
            self._delivered.clear()

    def ack(self, delivery_tag: str) -> None:
        if self._closed(f"acknowledge message {delivery_tag}"):
            return
        _retrying(
            f"acknowledge message {delivery_tag}",
            self.channel.ack_retry_seconds,
            lambda: self._remove_from_indices(delivery_tag).execute(),
        )
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            if self._closed(f"requeue message {delivery_tag}"):
                return
            _retrying(
                f"requeue message {delivery_tag}",
                self.channel.ack_retry_seconds,
                lambda: self.restore_by_tag(delivery_tag, leftmost=True),
            )
            virtual.QoS.ack(self, delivery_tag)
        else:
            self.ack(delivery_tag)

    def _closed(self, what: str) -> bool:
        """True if this channel was closed (its broker connection broke and Celery's consumer
        reconnected meanwhile): a run that ends after that cannot settle its message here
        (kombu would raise AttributeError and take the worker down); it stays reserved, and
        its lapsing lease brings it back."""
        if self.channel.connection is not None:
            return False
        log.warning("cannot %s: its channel was closed; its lease will bring it back", what)
        return True


class Channel(_RedisChannel):  # type: ignore[misc]
    """kombu's Redis channel with the atomic fetch, bells and fresh delivery tags."""

    QoS = QoS
    ack_retry_seconds = ACK_RETRY_SECONDS
    from_transport_options = (*_RedisChannel.from_transport_options, "ack_retry_seconds")

    _vf_sent: str | None = None
    _vf_waiting = False  # the last fetch found every queue empty: wait on the bells next
    _vf_script_loaded = True
    _vf_no_ack: frozenset[str] = frozenset()  # queues consumed without acks

    # --- keys

    def _server(self, name: str) -> str:
        return str(self.global_keyprefix or "") + name

    def _lists(self, queues: list[str]) -> list[tuple[str, str]]:
        """(list, queue) for each of ``queues`` at each priority, in the order BRPOP takes
        them in kombu: every queue's highest priority first."""
        return [
            (self._q_for_pri(queue, pri), queue) for pri in self.priority_steps for queue in queues
        ]

    def _fetch_args(self, queues: list[str]) -> list[Any]:
        """The EVALSHA arguments (after the sha) of a fetch from ``queues``, with a new tag."""
        lists = self._lists(queues)
        keys = [self._server(self.unacked_key), self._server(self.unacked_index_key)]
        keys.append(self._server(UNREADABLE))
        keys += [self._server(name) for name, _ in lists]
        keys += [self._server(bell_name(queue)) for _, queue in lists]
        args = [str(uuid.uuid4()), repr(time.time()), *(queue for _, queue in lists)]
        return [len(keys), *keys, *args]

    def _delivered_payload(self, reply: Any) -> tuple[dict[str, Any], str] | None:
        """The message (under the tag it was reserved with) and queue of a fetch reply;
        None for a message that is not a kombu envelope (the script set it aside)."""
        key, item, tag = reply
        name = bytes_to_str(key)[len(str(self.global_keyprefix or "")) :]
        queue = name.rsplit(self.sep, 1)[0]
        if tag:
            payload = loads(bytes_to_str(item))
            properties = payload.get("properties") if isinstance(payload, dict) else None
            if isinstance(properties, dict):
                properties["delivery_tag"] = bytes_to_str(tag)
                return payload, queue
            # Reserved but not runnable: give the reservation up (the lease would bring it
            # back forever) and set it aside like any other unreadable message.
            with self.conn_or_acquire() as client:
                _raw(client, "HDEL", self._server(self.unacked_key), tag)
                _raw(client, "ZREM", self._server(self.unacked_index_key), tag)
                _raw(client, "LPUSH", self._server(UNREADABLE), item)
        log.error(
            "queue %s held a message that is not a kombu envelope (kept in %s): %.200r",
            queue,
            self._server(UNREADABLE),
            item,
        )
        return None

    # --- the consumer's poll: fetch, or wait on the bells

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        if no_ack:
            self._vf_no_ack = self._vf_no_ack | {queue}
        return super().basic_consume(queue, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        self._vf_no_ack = self._vf_no_ack - {queue}
        return super().basic_cancel(consumer_tag)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self._vf_no_ack:  # a consumer without acks takes kombu's own fetch
            self._vf_sent = None
            super()._brpop_start(timeout)
            return None
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        if self._vf_waiting:
            bells = list(dict.fromkeys(self._server(bell_name(queue)) for queue in queues))
            command: list[Any] = ["BRPOP", *bells, timeout or 0]
            self._vf_sent = _BELL
        else:
            args = self._fetch_args(queues)
            if self._vf_script_loaded:
                command = ["EVALSHA", _FETCH_SHA, *args]
            else:
                command = ["EVAL", FETCH_LUA, *args]
            self._vf_sent = _FETCH
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        # Sent raw: every key above is already the server's name (prefix included).
        self.client.connection.send_command(*command)
        return None

    def _brpop_read(self, **options: Any) -> bool:
        sent = self._vf_sent
        if sent is None:
            return bool(super()._brpop_read(**options))
        try:
            try:
                reply = self.client.parse_response(
                    self.client.connection, "BRPOP" if sent == _BELL else "EVALSHA", **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except redis.exceptions.NoScriptError:
                self._vf_script_loaded = False  # a restarted broker: send the script itself
                raise virtual.Empty() from None
            if sent == _BELL:
                self._vf_waiting = False  # rung, or timed out: fetch again
                raise virtual.Empty()
            self._vf_script_loaded = True
            if not reply:
                self._vf_waiting = True
                raise virtual.Empty()
            delivered = self._delivered_payload(reply)
            if delivered is None:
                raise virtual.Empty()  # set aside; fetch again at once
            payload, queue = delivered
            self._queue_cycle.rotate(queue)
            self.connection._deliver(payload, queue)
            return True
        finally:
            self._in_poll = None
            self._vf_sent = None
            self._flush_brpop_reauth()

    # --- basic_get

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        if no_ack:
            return super().basic_get(queue, no_ack=True, **kwargs)  # kombu's own RPOP
        with self.conn_or_acquire() as client:
            args = self._fetch_args([queue])
            try:
                reply = _raw(client, "EVALSHA", _FETCH_SHA, *args)
            except redis.exceptions.NoScriptError:
                reply = _raw(client, "EVAL", FETCH_LUA, *args)
        if not reply:
            return None
        delivered = self._delivered_payload(reply)
        if delivered is None:
            return None
        message = self.Message(delivered[0], channel=self)
        self.qos.append(message, message.delivery_tag)
        return message

    # --- publishing rings the bell

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        batch = kwargs.pop("_publish_batch", None)
        if batch is not None and not isinstance(batch, _PublishBatch):
            # vox_flow's capture (capture.py) building a message: the sender rings.
            super()._put(queue, message, _publish_batch=batch, **kwargs)
            return None
        commands = Commands()
        super()._put(queue, message, _publish_batch=commands, **kwargs)
        commands.add("lpush", bell_name(queue), "1")
        if batch is not None:
            for name, args in commands.commands:
                batch.add(name, *args)
            return None
        with self.conn_or_acquire() as client, client.pipeline() as pipe:
            for name, args in commands.commands:
                getattr(pipe, name)(*args)
            pipe.execute()
        return None

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        try:
            queues = self._lookup(exchange, routing_key)
        except Exception:  # kombu logged it already, in the call above
            return
        for queue in queues:
            pipe.lpush(bell_name(queue), "1")


def _raw(client: Any, *args: Any) -> Any:
    """Run a command on ``client`` as written: kombu's key-prefixing client would prefix the
    first key of an EVALSHA, and every key here is already the server's name."""
    return redis.Redis.execute_command(client, *args)  # type: ignore[no-untyped-call]


class Transport(_RedisTransport):  # type: ignore[misc]
    """kombu's Redis transport with vox_flow's channel (the default of vox_flow apps)."""

    Channel = Channel


# The parts of kombu's Redis transport this module overrides or calls (kombu 5.7): if one is
# gone or renamed, the transport would silently fall back to kombu's fetch, or break.
REQUIRED = {
    "Channel": (
        "_brpop_start", "_brpop_read", "_q_for_pri", "_put", "_do_restore_message",
        "_lookup", "_flush_brpop_reauth", "basic_get", "basic_consume", "basic_cancel",
        "from_transport_options", "priority_steps", "sep", "conn_or_acquire",
    ),
    "QoS": ("append", "ack", "reject", "restore_by_tag", "_remove_from_indices"),
    "MultiChannelPoller": ("_register_BRPOP", "on_readable", "get"),
    "PublishBatch": ("add",),
}  # fmt: skip


def missing() -> list[str]:
    """The names of ``REQUIRED`` that the installed kombu's Redis transport lacks."""
    return [
        f"kombu.transport.redis.{owner}.{name}"
        for owner, names in REQUIRED.items()
        for name in names
        if not hasattr(getattr(kombu_redis, owner, None), name)
    ]


__all__ = ["FETCH_LUA", "Channel", "QoS", "Transport", "bell_name"]
