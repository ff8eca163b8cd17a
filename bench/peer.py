"""A second replica for the profile storm: its own Redis connection, L1 and invalidation listener,
wired by the same ``assemble`` a worker uses; only its change streams are left out."""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis.asyncio as aioredis

from worker.adapters.memory_db import MemoryDatabase
from worker.adapters.memory_stores import (
    MemoryCheckpointStore,
    MemoryDeadLetters,
    MemoryFollowerGraph,
    MemoryPostStore,
    MemoryProfileSource,
)
from worker.app import Runtime, Stores, assemble, redis_client
from worker.publisher import MemoryPublisher
from worker.settings import Settings


class Peer:
    def __init__(self, settings: Settings, db: MemoryDatabase) -> None:
        self.redis: aioredis.Redis = redis_client(settings)
        stores = Stores(
            MemoryProfileSource(db),
            MemoryPostStore(db),
            MemoryFollowerGraph(),
            MemoryCheckpointStore(),
            MemoryDeadLetters(),
        )
        self.runtime: Runtime = assemble(settings, {}, stores, MemoryPublisher(), self.redis)
        self.received: dict[tuple[str, int], float] = {}  # (user, version) → when this replica heard
        self._task: asyncio.Task[None] | None = None

    async def start(self, warm: list[str]) -> None:
        """Subscribe, then hold ``warm`` in L1 as a replica serving them would."""
        cache = self.runtime.cache
        received = self.received

        def on_invalidate(user: str, version: int) -> None:
            received.setdefault((user, version), time.perf_counter())
            cache.on_remote_invalidation(user, version)

        bus = self.runtime.bus
        self._task = asyncio.create_task(bus.run(on_invalidate, cache.l1.clear))
        # Polled: subscribed once the bus has cleared L1 for its first subscription.
        while getattr(bus, "gaps", 1) < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await cache.get_many(warm)

    def stale(self, users: list[str], version: int = 2) -> int:
        """How many of ``users`` this replica's L1 still holds at a version below ``version``."""
        found, _ = self.runtime.cache.l1.get_many(users)
        return sum(1 for snap in found.values() if snap is not None and snap.version < version)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()
