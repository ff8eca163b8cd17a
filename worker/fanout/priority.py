"""Within one fan-out process the ordinary lane goes first.

Both lanes share the process's CPU, its chunk publisher (one channel, one confirm window) and the
broker. A celebrity's range publishing flat out would put hundreds of chunks ahead of an ordinary
post's few. So while ordinary jobs are in hand, each bulk chunk waits for the ordinary lane to be
idle, but never longer than ``max_wait_seconds``: a steady ordinary load slows the bulk lane down,
it never starves it. Across processes (a deployment that runs lanes on separate workers) only the
broker is shared, and this does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from handlers.ports import OutgoingMessage, Publisher

MAX_WAIT_SECONDS = 0.05  # while ordinary jobs keep coming, a bulk job still sends ~20 chunks/s


class LanePriority:
    def __init__(self, max_wait_seconds: float = MAX_WAIT_SECONDS) -> None:
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._max_wait = max_wait_seconds
        self.yields = 0  # bulk chunks that waited for the ordinary lane

    @contextlib.contextmanager
    def ordinary_job(self) -> Iterator[None]:
        """Held around each ordinary job, from its delivery to its ack."""
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def bulk_turn(self) -> None:
        """Return at once if no ordinary job is in hand; else once there is none, or after the cap."""
        if self._idle.is_set():
            return
        self.yields += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._max_wait):
                await self._idle.wait()


class YieldingPublisher:
    """The bulk lane's view of the chunk publisher: each send waits its turn first."""

    def __init__(self, inner: Publisher, priority: LanePriority) -> None:
        self._inner = inner
        self._priority = priority

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        await self._priority.bulk_turn()
        return await self._inner.send(message)
