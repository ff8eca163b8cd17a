"""Leader election by lease: only the holder tails the streams.

Each takeover increments the lease ``epoch``; checkpoint writes carry it and are refused when a
newer epoch has written (fencing), so a deposed leader that wakes up late cannot move a
checkpoint. A leader that cannot renew stops processing before its lease can expire.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable

from loguru import logger

from enrichment.backoff import wait_event
from enrichment.errors import FanoutError
from worker.ports import Lease, LeaseStore
from worker.settings import LeaderSettings
from worker.shutdown import raise_if_cancelling


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Leadership:
    def __init__(
        self,
        store: LeaseStore,
        settings: LeaderSettings,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cfg = settings
        self.owner = owner or default_owner()
        self._clock = clock
        self.role = "starting"
        self.lease: Lease | None = None
        self.takeovers = 0

    async def acquire(self, stop: asyncio.Event) -> Lease | None:
        """Wait as a standby until the lease is ours (returned) or ``stop`` is set (None)."""
        announced = False
        while not stop.is_set():
            try:
                async with asyncio.timeout(self._cfg.ttl_seconds):
                    lease = await self._store.acquire(self.owner, self._cfg.ttl_seconds)
            except (FanoutError, TimeoutError) as exc:
                raise_if_cancelling()  # a driver may turn a cancellation into an error
                logger.warning("lease store unavailable ({}); still standby", exc)
                lease = None
            if lease is not None:
                self.lease = lease
                self.role = "leader"
                self.takeovers += 1
                logger.info("leader now (owner {}, epoch {})", self.owner, lease.epoch)
                return lease
            self.role = "standby"
            if not announced:
                logger.info("standby: another worker holds the lease")
                announced = True
            await wait_event(stop, self._cfg.renew_interval_seconds)
        return None

    async def hold(self, lease: Lease, lost: Callable[[str], None]) -> None:
        """Renew until cancelled. Calls ``lost(reason)`` and returns when leadership must end.

        The local deadline is the last successful renewal plus the TTL minus one renew interval,
        so processing stops before the lease can expire and a standby take over.
        """
        margin = self._cfg.renew_interval_seconds
        deadline = self._clock() + self._cfg.ttl_seconds - margin
        while True:
            await asyncio.sleep(min(self._cfg.renew_interval_seconds, max(0.0, deadline - self._clock())))
            if self._clock() >= deadline:
                self._demote()
                lost("could not renew the lease in time")
                return
            started = self._clock()
            try:
                # Bounded by the local deadline: a black-holed store must not keep us leading.
                async with asyncio.timeout(max(0.0, deadline - started)):
                    renewed = await self._store.renew(lease, self._cfg.ttl_seconds)
            except (FanoutError, TimeoutError) as exc:
                raise_if_cancelling()
                logger.warning("lease renewal failed ({!r}); retrying until the local deadline", exc)
                continue
            if renewed is None:
                self._demote()
                lost("the lease was taken over or expired")
                return
            lease = renewed
            self.lease = renewed
            deadline = started + self._cfg.ttl_seconds - margin

    def _demote(self) -> None:
        self.role = "standby"

    async def release(self) -> None:
        lease, self.lease = self.lease, None
        if lease is None:
            return
        try:
            await self._store.release(lease)
        except FanoutError as exc:
            logger.warning("could not release the lease ({}); it will expire by itself", exc)
