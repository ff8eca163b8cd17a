"""The circuit breaker: closed → open after N failures → one half-open trial → closed."""

from __future__ import annotations

from enrichment.breaker import CircuitBreaker


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def breaker(clock: FakeClock, threshold: int = 3, cooldown: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(threshold, cooldown, clock=clock)


def test_stays_closed_below_the_threshold() -> None:
    clock = FakeClock()
    cb = breaker(clock)
    assert cb.failure() is False
    assert cb.failure() is False
    assert not cb.is_open
    assert cb.allow()


def test_a_success_resets_the_consecutive_failure_count() -> None:
    # Given two failures, then a success
    clock = FakeClock()
    cb = breaker(clock)
    cb.failure()
    cb.failure()
    assert cb.success() is False  # it was not open
    # When two more failures follow
    cb.failure()
    cb.failure()
    # Then the breaker is still closed: they are not consecutive with the first two
    assert not cb.is_open
    assert cb.trips == 0


def test_opens_after_threshold_failures_and_refuses_during_the_cooldown() -> None:
    # Given a breaker with threshold 3 and a 10 s cool-down
    clock = FakeClock()
    cb = breaker(clock)
    cb.failure()
    cb.failure()
    # When the third consecutive failure happens
    opened = cb.failure()
    # Then it opens (once) and refuses calls until the cool-down has passed
    assert opened is True
    assert cb.is_open
    assert cb.trips == 1
    assert cb.allow() is False
    clock.now += 9.9
    assert cb.allow() is False


def test_allows_exactly_one_half_open_trial_after_the_cooldown() -> None:
    clock = FakeClock()
    cb = breaker(clock)
    for _ in range(3):
        cb.failure()
    # When the cool-down has passed
    clock.now += 10.0
    # Then one trial call goes through, and no other until it reports back
    assert cb.allow() is True
    assert cb.allow() is False
    assert cb.allow() is False
    assert cb.is_open


def test_a_successful_trial_closes_the_breaker() -> None:
    clock = FakeClock()
    cb = breaker(clock)
    for _ in range(3):
        cb.failure()
    clock.now += 10.0
    assert cb.allow()
    # When the trial succeeds
    closed = cb.success()
    # Then the breaker reports it closed, and every call goes through again
    assert closed is True
    assert not cb.is_open
    assert cb.allow() and cb.allow()
    # And it takes a full threshold of new failures to open it again
    cb.failure()
    cb.failure()
    assert not cb.is_open
    assert cb.failure() is True
    assert cb.trips == 2


def test_a_failed_trial_reopens_for_a_new_cooldown() -> None:
    clock = FakeClock()
    cb = breaker(clock)
    for _ in range(3):
        cb.failure()
    clock.now += 10.0
    assert cb.allow()
    # When the trial fails
    reopened = cb.failure()
    # Then it stays open (not a new trip) for another full cool-down from now
    assert reopened is False
    assert cb.is_open
    assert cb.trips == 1
    assert cb.allow() is False
    clock.now += 9.9
    assert cb.allow() is False
    clock.now += 0.1
    assert cb.allow() is True
