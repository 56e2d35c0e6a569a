"""LeaderLock against the session's Redis, with the replica's clock in the test's hands.

Redis keeps real time (the locks here live 10 s, longer than any of these tests), while each
replica's own clock, which decides when it stops trusting its lock, is a ``Clock`` the test
moves: so the safety margin and the renewal period are checked to the tick.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from vox_flow.leader import LeaderLock

TTL = 10.0
LOCK, FENCE = "test:leader:lock", "test:leader:fence"


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def replica(client: redis.Redis, clock: Clock, name: str) -> LeaderLock:
    return LeaderLock(client, TTL, lock_key=LOCK, fence_key=FENCE, replica=name, monotonic=clock)


def holder(client: redis.Redis) -> str | None:
    value = client.get(LOCK)
    return value.decode() if value is not None else None


def test_each_leadership_gets_a_larger_fencing_token(client: redis.Redis, clock: Clock) -> None:
    a, b = replica(client, clock, "a"), replica(client, clock, "b")
    assert a.try_acquire() == 1
    assert b.try_acquire() is None and b.token is None  # held: no token, counter untouched
    assert holder(client) == "a 1" == a.holder()
    a.release()
    assert b.try_acquire() == 2
    b.release()
    assert a.try_acquire() == 3
    assert a.token == 3 and holder(client) == "a 3"
    assert client.get(FENCE) == b"3"


def test_a_leader_stops_leading_at_90_percent_of_the_ttl_without_a_renewal(
    client: redis.Redis, clock: Clock
) -> None:
    a = replica(client, clock, "a")
    start = clock.now
    assert a.try_acquire() == 1
    clock.now = start + 0.9 * TTL - 0.001
    assert a.leading()
    clock.now = start + 0.9 * TTL
    assert not a.leading()
    assert holder(client) == "a 1" and client.pttl(LOCK) > 0  # Redis still holds it for us
    # Past its safe window the replica does not renew what it no longer trusts: it gives up.
    assert not a.keep()
    assert a.token is None and not a.leading()


def test_keep_renews_only_once_a_fifth_of_the_ttl_has_passed(
    client: redis.Redis, clock: Clock
) -> None:
    a = replica(client, clock, "a")
    start = clock.now
    assert a.try_acquire() == 1
    # Shorten the lock in Redis: a renewal is then seen as the TTL going back up to 10 s.
    client.pexpire(LOCK, 5000)
    clock.now = start + TTL / 5 - 0.001
    assert a.keep()
    assert client.pttl(LOCK) <= 5000  # too early: no round trip, no renewal
    clock.now = start + TTL / 5
    assert a.keep()
    assert client.pttl(LOCK) > 5000  # renewed to the full TTL
    # The safe window now runs from the renewal.
    clock.now = start + TTL / 5 + 0.9 * TTL - 0.001
    assert a.leading()
    clock.now = start + TTL / 5 + 0.9 * TTL
    assert not a.leading()


def test_a_lock_another_replica_took_is_lost(client: redis.Redis, clock: Clock) -> None:
    a, b = replica(client, clock, "a"), replica(client, clock, "b")
    assert a.try_acquire() == 1
    client.delete(LOCK)  # a's lock lapsed in Redis (a paused, say) ...
    assert b.try_acquire() == 2  # ... and b took over
    client.pexpire(LOCK, 5000)
    clock.now += TTL / 5  # a's next renewal is due, well inside a's own safe window
    assert a.leading()  # a cannot know before it asks Redis
    assert not a.keep()
    assert a.token is None and not a.leading()
    assert holder(client) == "b 2"
    assert client.pttl(LOCK) <= 5000  # a's renewal did not extend b's lock
    assert not a.keep()  # and stays lost


def test_release_deletes_only_our_own_lock(client: redis.Redis, clock: Clock) -> None:
    a, b = replica(client, clock, "a"), replica(client, clock, "b")
    assert a.try_acquire() == 1
    client.delete(LOCK)
    assert b.try_acquire() == 2
    a.release()  # a still believes it leads: its release must not free b's lock
    assert a.token is None
    assert holder(client) == "b 2"
    a.release()  # not leading: nothing to do
    assert holder(client) == "b 2"
    b.release()
    assert holder(client) is None and b.token is None
    assert b.holder() is None


def test_raise_fence_never_lowers_the_counter(client: redis.Redis, clock: Clock) -> None:
    a = replica(client, clock, "a")
    a.raise_fence(10)  # a fresh Redis lost the counter; the fenced place has seen token 10
    assert client.get(FENCE) == b"10"
    assert a.try_acquire() == 11
    a.raise_fence(5)  # below the counter: ignored
    assert client.get(FENCE) == b"11"
    a.raise_fence(11)  # at the counter: unchanged
    assert client.get(FENCE) == b"11"
    a.release()
    assert a.try_acquire() == 12
