"""Retry policy: how many attempts, how long between them, which errors are worth retrying."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pydantic import ValidationError


@dataclass(frozen=True)
class RetryPolicy:
    """Per-task retry policy: exponential backoff with full jitter.

    The delay before attempt ``n + 1`` is uniform in ``[0, min(max_delay, base_delay * 2**(n-1))]``
    (AWS's "full jitter"). An error is retried when it is an instance of ``retry_on`` and not
    of ``dont_retry_on``; ``dont_retry_on`` wins. Validation errors are never retried.
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 300.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("base_delay and max_delay: must not be negative")

    def retryable(self, exc: BaseException) -> bool:
        """Whether this error may be retried at all (ignoring the attempt count)."""
        if isinstance(exc, (ValidationError, *self.dont_retry_on)):
            return False
        return isinstance(exc, self.retry_on)

    def ceiling(self, attempt: int) -> float:
        """The largest delay after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1)))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A full-jitter delay after failed attempt ``attempt``."""
        draw: float = (rng or random).uniform(0.0, self.ceiling(attempt))
        return draw

    def next_delay(self, exc: BaseException, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when the task should dead-letter."""
        if attempt >= self.max_attempts or not self.retryable(exc):
            return None
        return self.delay(attempt)
