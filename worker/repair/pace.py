"""The repair tools' pace: a token bucket, and the publisher that routes every job to one lane."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from handlers.ports import OutgoingMessage
from worker.ports import ManagedPublisher, PublishStats


class TokenBucket:
    """``rate`` items per second on average, ``burst`` at once. ``take(n)`` may run into debt (n >
    burst) and then waits it out, so a batch larger than the burst still goes, at the rate."""

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self.waited_seconds = 0.0

    async def take(self, n: int) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= n
        if self._tokens < 0:
            delay = -self._tokens / self._rate
            self.waited_seconds += delay
            await self._sleep(delay)


class LanePublisher:
    """A job publisher that sends every job to one lane (routing key), whatever lane (or delay) the
    emitter chose: repair jobs go through the backfill lane, byte for byte and id for id the jobs
    live handling publishes."""

    def __init__(self, inner: ManagedPublisher, routing_key: str) -> None:
        self._inner = inner
        self._key = routing_key
        self.stats: PublishStats = inner.stats  # the same counters, shared

    @property
    def in_flight(self) -> int:
        return self._inner.in_flight

    async def connect(self) -> None:
        await self._inner.connect()

    async def close(self, drain_seconds: float = 0.0) -> None:
        await self._inner.close(drain_seconds)

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        return await self._inner.send(dataclasses.replace(message, routing_key=self._key))
