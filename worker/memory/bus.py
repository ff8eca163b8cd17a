"""In-memory stand-in for the cross-replica invalidation bus: replicas in one process share a hub.
NOT Redis pub/sub."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from enrichment.ports import OnGap, OnInvalidate


class LocalInvalidationBus:
    """In-memory stand-in: replicas in one process (the demo and unit tests) share one hub."""

    def __init__(self, hub: list[LocalInvalidationBus] | None = None) -> None:
        self._hub = hub if hub is not None else []
        self._hub.append(self)
        self._queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue(maxsize=10_000)
        self.published = 0

    async def publish_many(self, changes: Sequence[tuple[str, int]]) -> bool:
        self.published += len(changes)
        told = True
        for peer in self._hub:
            for change in changes:
                if peer is self:
                    continue
                if peer._queue.full():
                    told = False
                else:
                    peer._queue.put_nowait(change)
        return told

    async def run(self, on_invalidate: OnInvalidate, on_gap: OnGap) -> None:
        while True:
            on_invalidate(*await self._queue.get())
