"""The idempotency store's scripts on a real Redis server: scoped keys, compare-and-extend."""

from __future__ import annotations

import redis

from vox_flow.idempotency import Claim, IdempotencyStore
from vox_flow.keyspace import idem_claim, idem_done, scoped_key


def test_renewal_extends_only_the_claims_their_runs_still_hold(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = IdempotencyStore(client, 60)
    mine, theirs = scoped_key("charge", "a"), scoped_key("charge", "b")
    assert store.claim(mine, "run-1", 5).state == "claimed"
    assert store.claim(theirs, "run-2", 5).state == "claimed"
    # run-2's claim lapsed and run-3 claimed the key since: run-2's renewal must not
    # extend run-3's claim.
    client.set(idem_claim("charge", "b"), "run-3", px=1000)
    assert store.renew({mine: "run-1", theirs: "run-2"}, 60) == {mine}
    assert 5_000 < client.pttl(idem_claim("charge", "a")) <= 60_000
    assert client.pttl(idem_claim("charge", "b")) <= 1000
    assert client.get(idem_claim("charge", "b")) == b"run-3"
    assert store.renew({}, 60) == set()


def test_the_same_key_of_two_tasks_is_two_effects(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = IdempotencyStore(client, 60)
    split, count = scoped_key("split_words", "K"), scoped_key("count_words", "K")
    assert store.claim(split, "run-1", 5).state == "claimed"
    assert store.complete(split, "run-1", "split's result")
    assert client.get(idem_done("split_words", "K")) == b"split's result"
    assert store.claim(count, "run-2", 5).state == "claimed"  # not split's "done"
    assert store.claim(split, "run-3", 5) == Claim("done", "split's result")
