"""In-memory stand-in for RabbitMQ publishing (demo, benchmarks, unit tests). NOT RabbitMQ."""

from __future__ import annotations

import asyncio

from handlers.ports import OutgoingMessage
from worker.ports import PublishStats


class MemoryPublisher:
    """In-memory stand-in for RabbitMQ (demo, benchmarks, unit tests): confirms at once.

    With ``keep=False`` it only counts, so a huge fan-out does not grow its memory.
    """

    def __init__(self, window: int = 256, keep: bool = True) -> None:
        self._slots = asyncio.Semaphore(window)
        self._keep = keep
        self.messages: list[OutgoingMessage] = []
        self.stats = PublishStats()
        self.in_flight = 0

    async def connect(self) -> None:
        return None

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        async with self._slots:
            if self._keep:
                self.messages.append(message)
            self.stats.sent += 1
            self.stats.confirmed += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def close(self, drain_seconds: float = 0.0) -> None:
        return None
