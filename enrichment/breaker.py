"""A small circuit breaker, so a dead dependency costs one timeout per cool-down, not one per batch."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Closed → (``threshold`` consecutive failures) → open for ``cooldown`` → half-open: one trial call."""

    def __init__(
        self, threshold: int, cooldown_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.trips = 0

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """May a call go through now?"""
        if self._opened_at is None:
            return True
        if self._trial_in_flight or self._clock() - self._opened_at < self._cooldown:
            return False
        self._trial_in_flight = True
        return True

    def success(self) -> bool:
        """Record a success. Returns True if this closed an open breaker (the dependency is back)."""
        was_open = self._opened_at is not None
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False
        return was_open

    def abandon(self) -> None:
        """A call was cancelled before it could tell: let the next one be the trial."""
        self._trial_in_flight = False

    def failure(self) -> bool:
        """Record a failure. Returns True if this opened the breaker."""
        self._failures += 1
        if self._opened_at is not None:
            # A failed half-open trial: stay open for another cool-down.
            self._opened_at = self._clock()
            self._trial_in_flight = False
            return False
        if self._failures >= self._threshold:
            self._opened_at = self._clock()
            self.trips += 1
            return True
        return False
