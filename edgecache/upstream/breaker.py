"""Per-upstream circuit breaker (pure state machine; the clock is injected).

When an upstream is down, every request would otherwise wait out its own connect timeout
before the cache falls back to stale content. After `threshold` consecutive failures the
circuit opens and calls fail at once; after `cooldown` seconds one trial call is let through
(half-open): its success closes the circuit, its failure re-opens it for another cooldown.
Only "unavailable" failures count: a 404 or 401 proves the upstream is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.cooldown:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """Seconds until a trial call will be let through (0 when one would be now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    @property
    def available(self) -> bool:
        """Whether a call made now would be attempted (closed, or a trial slot is free)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._trial_in_flight

    def acquire(self) -> bool:
        """Ask to make a call. False: fail fast. True: go ahead, then report exactly one of
        success(), failure() or release()."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def failure(self) -> None:
        self._failures += 1
        was_trial = self._trial_in_flight
        self._trial_in_flight = False
        if was_trial or self._failures >= self.threshold:
            self._opened_at = self._clock()

    def release(self) -> None:
        """The call ended without a verdict (cancelled by its caller): free the trial slot."""
        self._trial_in_flight = False
