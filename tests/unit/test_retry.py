"""Retry policy: full-jitter bounds, which errors retry, validation of the policy itself."""

from __future__ import annotations

import random

import pytest
from pydantic import BaseModel, ValidationError

from vox_flow.retry import RetryPolicy


class Flaky(Exception):
    pass


class Fatal(Flaky):
    pass


def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.5, max_delay=8.0)
    assert [policy.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    rng = random.Random(7)
    for attempt in range(1, 10):
        delays = [policy.delay(attempt, rng) for _ in range(2000)]
        assert all(0.0 <= d <= policy.ceiling(attempt) for d in delays)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(delays) < 0.05 * policy.ceiling(attempt)
        assert max(delays) > 0.95 * policy.ceiling(attempt)


def test_which_errors_retry() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=(Flaky,), dont_retry_on=(Fatal,))
    assert policy.next_delay(Flaky("x"), 1) is not None
    assert policy.next_delay(Fatal("x"), 1) is None  # dont_retry_on wins over retry_on
    assert policy.next_delay(KeyError("x"), 1) is None  # not in retry_on
    assert policy.next_delay(Flaky("x"), 3) is None  # attempts used up

    class M(BaseModel):
        n: int

    with pytest.raises(ValidationError) as err:
        M.model_validate({"n": "x"})
    assert RetryPolicy().next_delay(err.value, 1) is None  # bad data never gets better


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="must not be negative"):
        RetryPolicy(base_delay=-1)
