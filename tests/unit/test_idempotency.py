"""Storing a completion through a broker outage (no broker: the store's scripts are replaced
by a double that fails as told, and the clock is the test's)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis

from vox_flow import idempotency
from vox_flow.idempotency import CompletionNotStored, IdempotencyStore

LEASE = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Scripts:
    """A Redis client double: each registered script answers from ``answers[name]``, in
    order; an exception in there is raised instead."""

    def __init__(self, **answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, list[str], list[Any]]] = []

    def register_script(self, source: str) -> Any:
        name = next(n for n in ("CLAIM", "COMPLETE", "RELEASE", "RENEW")
                    if getattr(idempotency, f"_{n}_LUA") == source)  # fmt: skip

        def run(keys: list[str], args: list[Any]) -> Any:
            self.calls.append((name, keys, args))
            answer = self.answers[name].pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return run


def store(clock: Clock, **answers: list[Any]) -> tuple[IdempotencyStore, Scripts]:
    scripts = Scripts(CLAIM=[[b"claimed", b""]], **answers)
    return IdempotencyStore(scripts, 60, clock=clock, sleep=clock.sleep), scripts  # type: ignore[arg-type]


def test_a_completion_is_tried_again_with_backoff_until_the_broker_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    down = redis.ConnectionError("Connection refused")
    store_, scripts = store(clock, COMPLETE=[down] * 6 + [1])
    assert store_.claim("7:charges:k", "run-1", LEASE).state == "claimed"
    with caplog.at_level(logging.WARNING, logger="vox_flow.idempotency"):
        assert store_.complete_while_held("7:charges:k", "run-1", "result", LEASE) is True
    assert clock.slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]  # doubling, capped at 1 s
    assert [c[0] for c in scripts.calls].count("COMPLETE") == 7
    # Said what it waits for, not once per try (the first warning, then every 5 s), and
    # that it got there.
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "cannot store the completion of idempotency key '7:charges:k'" in warnings[0]
    assert "waiting for the broker" in warnings[0] and "ConnectionError" in warnings[0]
    assert "after all" in warnings[1]


def test_it_gives_up_once_the_claim_could_have_lapsed_and_renewals_push_that_back() -> None:
    clock = Clock()
    down = redis.ConnectionError("Connection refused")
    store_, _ = store(clock, COMPLETE=[down] * 1000, RENEW=[[1]])
    store_.claim("k", "run-1", LEASE)
    clock.now += 10
    assert store_.renew({"k": "run-1"}, LEASE) == {"k"}  # known held 10 s after the claim
    claimed_at = clock.now - 10
    with pytest.raises(CompletionNotStored) as err:
        store_.complete_while_held("k", "run-1", "result", LEASE)
    assert clock.now == pytest.approx(claimed_at + 10 + LEASE)  # not one try past that
    assert "'k'" in str(err.value) and "ConnectionError" in str(err.value)
    assert store_.held_since("k", "run-1") == float("-inf")  # forgotten


def test_a_claim_another_run_holds_now_is_not_known_held() -> None:
    clock = Clock()
    store_, scripts = store(clock, RENEW=[[0, 1]], COMPLETE=[redis.ConnectionError("down")])
    store_.claim("mine", "run-1", LEASE)
    claimed_at = clock.now
    clock.now += 5
    store_._held_at["theirs"] = ("run-2", clock.now - 5)
    # The script compares tokens; "mine" lapsed and was claimed by someone else.
    assert store_.renew({"mine": "run-1", "theirs": "run-2"}, LEASE) == {"theirs"}
    assert scripts.calls[-1][1:] == (
        ["vf:idem:claim:mine", "vf:idem:claim:theirs"],
        [30_000, "run-1", "run-2"],
    )
    assert store_.held_since("mine", "run-1") == claimed_at  # not moved by that renewal
    assert store_.held_since("mine", "another token") == float("-inf")


def test_a_completion_that_is_stored_is_forgotten() -> None:
    clock = Clock()
    store_, _ = store(clock, COMPLETE=[1], RENEW=[[1]])
    store_.claim("k", "run-1", LEASE)
    assert store_.complete_while_held("k", "run-1", "result", LEASE) is True
    assert store_.held_since("k", "run-1") == float("-inf")
    store_.renew({"k": "run-1"}, LEASE)  # a renewal that raced the completion
    assert store_._held_at == {}
