"""Tracks the confirmations of one event's publishes without keeping the finished ones."""

from __future__ import annotations

import asyncio


class ConfirmSet:
    """Holds only confirmations still in flight, so a 1M-follower fan-out stays bounded in memory."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[None]] = set()
        self._error: BaseException | None = None
        self.confirmed = 0

    def add(self, future: asyncio.Future[None]) -> None:
        self._pending.add(future)
        future.add_done_callback(self._on_done)

    def _on_done(self, future: asyncio.Future[None]) -> None:
        self._pending.discard(future)
        if future.cancelled():
            self._error = self._error or asyncio.CancelledError()
        elif (exc := future.exception()) is not None:
            self._error = self._error or exc
        else:
            self.confirmed += 1

    @property
    def failed(self) -> bool:
        return self._error is not None

    async def wait(self) -> None:
        """Wait for every confirmation; raise the first failure, if any."""
        if self._pending:
            await asyncio.wait(list(self._pending))
        if self._error is not None:
            raise self._error
