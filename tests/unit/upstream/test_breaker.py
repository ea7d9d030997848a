from __future__ import annotations

from edgecache.upstream.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 5, cooldown: float = 10.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(threshold, cooldown, clock), clock


def fail(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        assert b.acquire()
        b.failure()


def test_opens_after_consecutive_failures() -> None:
    b, _ = make()
    fail(b, 4)
    assert b.state is BreakerState.CLOSED and b.available
    fail(b, 1)
    assert b.state is BreakerState.OPEN and not b.available
    assert not b.acquire()


def test_success_resets_the_count() -> None:
    b, _ = make()
    fail(b, 4)
    assert b.acquire()
    b.success()
    fail(b, 4)
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_one_trial_through() -> None:
    b, clock = make(cooldown=10)
    fail(b, 5)
    clock.now += 9.9
    assert not b.acquire() and b.retry_in() > 0
    clock.now += 0.1
    assert b.state is BreakerState.HALF_OPEN and b.available and b.retry_in() == 0
    assert b.acquire()  # the trial
    assert not b.available and not b.acquire()  # everyone else still fails fast
    b.success()
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 0
    assert b.acquire() and b.acquire()


def test_failed_trial_reopens_for_a_full_cooldown() -> None:
    b, clock = make(cooldown=10)
    fail(b, 5)
    clock.now += 10
    assert b.acquire()
    b.failure()
    assert b.state is BreakerState.OPEN
    clock.now += 9
    assert not b.acquire()
    clock.now += 1
    assert b.acquire()


def test_released_trial_frees_the_slot() -> None:
    """A trial cancelled by its caller must not leave the circuit stuck half-open."""
    b, clock = make(cooldown=1)
    fail(b, 5)
    clock.now += 1
    assert b.acquire()
    b.release()
    assert b.state is BreakerState.HALF_OPEN and b.available
    assert b.acquire()


def test_threshold_one() -> None:
    b, _ = make(threshold=1)
    fail(b, 1)
    assert b.state is BreakerState.OPEN
