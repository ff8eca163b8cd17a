"""The fan-out role: one connection to RabbitMQ, one consumer per lane, reconnecting on loss.

When the connection (or a lane's channel) is lost, the jobs in hand can no longer be acked: the
broker requeues them, so they are cancelled here, and the lanes restart on a new connection after
a capped, jittered backoff. Stats live in the consumers and carry over reconnects. ``run`` returns
once ``stop`` is set, after the jobs in hand had ``drain_seconds`` to finish and be acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq.exceptions import ChannelAccessRefused, ChannelNotFoundEntity, ChannelPreconditionFailed
from loguru import logger

from enrichment.backoff import Backoff, wait_event
from enrichment.errors import ConfigError
from handlers.chunks import ChunkCounts
from handlers.jobs import Lane
from handlers.ports import FollowerGraph, Publisher
from worker.fanout.consumer import FanoutConsumer
from worker.fanout.priority import LanePriority, YieldingPublisher
from worker.messaging.jobs import CONSUMED_LANES, lane_queues
from worker.settings import FanoutSettings
from worker.shutdown import raise_if_cancelling

_WATCH_SECONDS = 0.2  # how often a lost channel or connection is looked for
_DEPTH_EVERY = 25  # read the lanes' depths every 25 watches (5 s)


class FanoutRunner:
    def __init__(
        self,
        url: str,
        settings: FanoutSettings,
        graph: FollowerGraph,
        publisher: Publisher,
        chunk_size: int,
        timeout_seconds: float,
        reconnect_max_seconds: float,
        lanes: Sequence[Lane] = CONSUMED_LANES,
        counts: ChunkCounts | None = None,
    ) -> None:
        self._url = url
        self._timeout = timeout_seconds
        self._backoff = Backoff(0.2, reconnect_max_seconds)
        self.priority = LanePriority()
        self.consumers: dict[Lane, FanoutConsumer] = {
            lane: FanoutConsumer(
                settings,
                lane,
                graph,
                YieldingPublisher(publisher, self.priority) if lane != "ordinary" else publisher,
                chunk_size,
                timeout_seconds,
                counts,
                held=self.priority.ordinary_job if lane == "ordinary" else None,
            )
            for lane in lanes
        }
        self.reconnects = 0
        self.connected = False
        self._settings = settings
        # Jobs waiting in each queue, read every few seconds while connected (None: unknown): the lanes,
        # the delay queue ("deferred") and the jobs dead-lettered, by a worker or by the broker ("dead").
        self._queues: dict[str, list[str]] = {lane: lane_queues(settings, lane) for lane in lanes}
        self._queues |= {"deferred": [settings.deferred_queue], "dead": [settings.dead_letter_queue]}
        self.depths: dict[str, int | None] = dict.fromkeys(self._queues)

    async def run(self, stop: asyncio.Event, drain_seconds: float) -> None:
        """Consume every lane until ``stop`` is set; reconnect with backoff whenever the broker is lost.

        A lane queue that is missing or refused is a configuration error (ConfigError), not a lost
        connection: retrying would loop for ever, never ready."""
        while not stop.is_set():
            connection: AbstractConnection | None = None
            stopped = False
            try:
                connection = await aio_pika.connect(self._url, timeout=self._timeout)
                for consumer in self.consumers.values():
                    await consumer.start(connection)
                self.connected = True
                self._backoff.reset()
                # Polled: a lost channel has no awaitable that also fires when the connection dies.
                polls = 0
                while not await wait_event(stop, _WATCH_SECONDS):
                    if connection.is_closed or any(c.lost for c in self.consumers.values()):
                        raise ConnectionError("connection or channel closed")
                    if polls % _DEPTH_EVERY == 0:
                        await self._read_depths(connection)
                    polls += 1
                await self._stop_consumers(connection, drain_seconds)
                stopped = True
            except (ChannelNotFoundEntity, ChannelAccessRefused, ChannelPreconditionFailed) as exc:
                raise ConfigError(
                    f"[fanout] job queues: {type(exc).__name__} ({exc}); declare them "
                    "(fanout.declare = true) or fix their names and permissions"
                ) from None
            except (TimeoutError, ConnectionError, *CONNECTION_EXCEPTIONS) as exc:
                self.connected = False
                delay = self._backoff.next_delay()
                logger.warning(
                    "fan-out: RabbitMQ lost ({}); jobs in hand will be redelivered; reconnecting in {:.1f}s",
                    type(exc).__name__,
                    delay,
                )
                await self._stop_consumers(connection, 0.0)
                stopped = True
                if not await wait_event(stop, delay):
                    self.reconnects += 1
            finally:
                if not stopped:  # cancelled, or failed otherwise: no job task outlives the runner
                    await self._stop_consumers(connection, 0.0)
        self.connected = False

    async def _read_depths(self, connection: AbstractConnection) -> None:
        """Each lane's ready jobs, by a passive declare (no management plugin needed)."""
        try:
            async with asyncio.timeout(self._timeout):
                channel = await connection.channel()
                try:
                    for key, names in self._queues.items():
                        depth = 0
                        for name in names:
                            queue = await channel.declare_queue(name, passive=True)
                            depth += queue.declaration_result.message_count or 0
                        self.depths[key] = depth
                finally:
                    await channel.close()
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            raise_if_cancelling()
            logger.debug("fan-out: queue depths not read ({})", type(exc).__name__)
            self.depths = dict.fromkeys(self.depths)

    async def _stop_consumers(self, connection: AbstractConnection | None, drain_seconds: float) -> None:
        await asyncio.gather(*(c.stop(drain_seconds) for c in self.consumers.values()))
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await connection.close()

    def oldest_job_ages(self) -> dict[Lane, float]:
        """Per lane, an upper bound on the age of the oldest job waiting (seconds): 0 when the queue
        is empty, else the wait of the last job taken plus the time since (the queue is FIFO, so the
        jobs behind it are younger). A lane whose depth is unknown, or that has taken no stamped job
        while jobs wait, is left out."""
        now = time.time()
        out: dict[Lane, float] = {}
        for lane, consumer in self.consumers.items():
            depth, stats = self.depths.get(lane), consumer.stats
            if depth == 0:
                out[lane] = 0.0
            elif depth is not None and stats.last_job_wait_seconds is not None:
                out[lane] = stats.last_job_wait_seconds + max(0.0, now - stats.last_job_taken_at)
        return out
