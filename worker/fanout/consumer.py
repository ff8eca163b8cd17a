"""The fan-out job consumer: one lane, its own channel and prefetch, competing with other workers.

Per job: decode it (malformed → dead-lettered with the reason, counted), stream the range's
followers, publish the chunks through the Publisher, and ack the job only once every chunk is
confirmed. A failure requeues the job (nack); RabbitMQ counts deliveries, and on the last one the
broker allows (``x-delivery-count`` reaching ``fanout.delivery_limit``) the worker dead-letters the
job itself with the error as its reason. A job that kills its workers never gets that far: the
broker dead-letters it past the limit (``x-death`` reason ``delivery_limit``). A worker stopped or
killed mid-job never acks, so the job is redelivered and replays the same message ids.

Memory: at most ``prefetch`` jobs in hand, each holding a page and a chunk (handlers/range_fanout).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from loguru import logger

from enrichment.backoff import Backoff
from enrichment.errors import InvalidJob, PermanentError, ServiceUnavailable
from handlers.chunks import ChunkCounts
from handlers.jobs import FanoutJob, Lane, decode_job
from handlers.ports import FollowerGraph, Publisher
from handlers.range_fanout import RangeResult, fan_out_range
from worker.messaging.jobs import dead_letter, delivery_count, open_lane
from worker.settings import FanoutSettings
from worker.shutdown import SETTLE_SECONDS, raise_if_cancelling
from worker.stats import FanoutStats


class FanoutConsumer:
    """Consumes one lane. ``start`` subscribes; ``stop`` cancels, drains, closes its channel."""

    def __init__(
        self,
        settings: FanoutSettings,
        lane: Lane,
        graph: FollowerGraph,
        publisher: Publisher,
        chunk_size: int,
        timeout_seconds: float = 10.0,
        counts: ChunkCounts | None = None,  # the process's chunk and recipient counters, if any
        held: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    ) -> None:
        self._counts = counts
        self._held = held or contextlib.nullcontext  # around each job (the ordinary lane's priority)
        self._waiting = 0  # jobs waiting out an unreachable dependency: the lane is paused meanwhile
        self._stopping = False
        self._settings = settings
        self.lane: Lane = lane
        self._graph = graph
        self._publisher = publisher
        self._chunk_size = chunk_size
        self._timeout = timeout_seconds
        self._channel: AbstractChannel | None = None
        self._queues: list[AbstractQueue] = []  # the lane's queues: one, or the bulk lane's shards
        self._tags: list[tuple[AbstractQueue, str]] = []  # consuming while non-empty
        self._consuming = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = FanoutStats()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def lost(self) -> bool:
        """Its channel closed under it (connection lost, or a broker error): restart it on a new one."""
        return self._channel is not None and self._channel.is_closed

    async def start(self, connection: AbstractConnection) -> None:
        """Open the lane's channel on ``connection`` (prefetch from settings) and start consuming.
        Stats carry over a ``stop`` and a ``start`` on a new connection."""
        self._stopping = False
        if self._channel is None:
            self._channel, self._queues = await open_lane(connection, self._settings, self.lane)
        await self.resume()

    async def resume(self) -> None:
        """Consume every queue of the lane that is not consumed yet (none once ``stop`` began)."""
        # One lock for resume and pause: each awaits the broker once per queue, and a pause landing
        # between two of a resume's consumes must not leave some shards unconsumed for good.
        async with self._consuming:
            if self._stopping:
                return
            consumed = {id(queue) for queue, _ in self._tags}
            for queue in self._queues:
                if id(queue) not in consumed:
                    self._tags.append((queue, await queue.consume(self._on_message)))

    async def pause(self) -> None:
        """Stop receiving new jobs (jobs in hand go on and are acked): basic.cancel."""
        async with self._consuming:
            tags, self._tags = self._tags, []
            for queue, tag in tags:
                with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                    await queue.cancel(tag)

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop receiving, let jobs in hand finish for ``drain_seconds``, cancel the rest and close the
        channel: the unacknowledged jobs go back to the queue for another worker. Safe twice."""
        self._stopping = True  # first: a job's resume racing this stop must not consume again
        if self.lost:
            self._tags = []  # nothing to cancel on a dead channel
        await self.pause()
        if self._tasks and drain_seconds > 0:
            await asyncio.wait(list(self._tasks), timeout=drain_seconds)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            # Bounded: a job task that swallows its cancellation must not hold the shutdown.
            await asyncio.wait(list(self._tasks), timeout=SETTLE_SECONDS)
        channel, self._channel, self._queues = self._channel, None, []
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout):
                    await channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Prefetch bounds how many arrive unacknowledged, so it bounds these tasks too.
        task = asyncio.create_task(self._handle(message), name=f"job {message.message_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        with self._held():
            await self._handle_job(message)

    async def _handle_job(self, message: AbstractIncomingMessage) -> None:
        self.stats.jobs_received += 1
        self._note_wait(message)
        deliveries = delivery_count(message)
        if deliveries:
            self.stats.redelivered += 1
        try:
            job = decode_job(message.body)
        except InvalidJob as exc:
            self.stats.malformed += 1
            await self._dead_letter(message, f"malformed job: {exc}")
            return
        try:
            result = await self._fan_out(job)
        except PermanentError as exc:
            await self._dead_letter(message, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:
            raise_if_cancelling()  # a shutdown, converted by a library: leave the job for redelivery
            reason = f"{type(exc).__name__}: {exc}"
            if deliveries >= self._settings.delivery_limit:
                # The broker would dead-letter it on this return, without saying why: do it here.
                await self._dead_letter(message, f"failed {deliveries + 1} deliveries; last: {reason}")
                return
            logger.warning(
                "job {} failed ({}); requeued (delivery {})", message.message_id, reason, deliveries + 1
            )
            self.stats.requeued += 1
            await self._settle(message.nack(requeue=True))
            return
        self.stats.chunks += result.chunks
        self.stats.recipients += result.recipients
        if await self._settle(message.ack()):
            self.stats.jobs_acked += 1

    def _note_wait(self, message: AbstractIncomingMessage) -> None:
        """How long the job waited in the queue (its AMQP timestamp, whole seconds, set by the job
        publisher): the lane's queue is FIFO, so this is the age of its oldest job when taken."""
        stamp = message.timestamp
        if stamp is None:
            return
        if stamp.tzinfo is None:  # AMQP timestamps are UTC seconds
            stamp = stamp.replace(tzinfo=UTC)
        now = time.time()
        self.stats.last_job_taken_at = now
        self.stats.last_job_wait_seconds = max(0.0, now - stamp.timestamp())

    async def _fan_out(self, job: FanoutJob) -> RangeResult:
        """Fan the range out; while a dependency is away (MongoDB), wait it out holding the job
        (worker/retry.py): requeueing would spend its deliveries and dead-letter a healthy job. The
        lane takes no new job meanwhile, so at most ``prefetch`` jobs wait; a wait longer than the
        broker's ``consumer_timeout`` (30 min by default) closes the channel and requeues them
        (docs/jobs.md)."""
        backoff = Backoff(0.2, self._timeout)
        waiting = False
        try:
            while True:
                try:
                    return await fan_out_range(
                        job, self._graph, self._publisher, self._chunk_size, self._counts
                    )
                except ServiceUnavailable as exc:
                    raise_if_cancelling()
                    if not waiting:
                        waiting = True
                        self._waiting += 1
                        if self._waiting == 1:
                            await self.pause()
                    delay = backoff.next_delay()
                    logger.warning("job {}: {}; retrying in {:.1f}s", job.message_id, exc, delay)
                    await asyncio.sleep(delay)
        finally:
            if waiting:
                self._waiting -= 1
                if self._waiting == 0 and not self._stopping:
                    await self.resume()

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        logger.error("dead-lettering job {} from the {} lane: {}", message.message_id, self.lane, reason)
        channel = self._channel
        try:
            if channel is None:
                raise RuntimeError("lane channel is closed")
            async with asyncio.timeout(self._timeout):
                await dead_letter(channel, self._settings, message, reason)
        except Exception as exc:
            # Not kept anywhere yet: hand it back rather than lose it.
            logger.warning("could not dead-letter job {} ({}); requeued", message.message_id, exc)
            self.stats.requeued += 1
            await self._settle(message.nack(requeue=True))
            return
        if await self._settle(message.ack()):
            self.stats.dead_lettered += 1

    async def _settle(self, step: Awaitable[None]) -> bool:
        """Ack or nack; on a dead channel the broker requeues the job anyway, so only log it."""
        try:
            async with asyncio.timeout(self._timeout):
                await step
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            logger.warning(
                "could not settle a job on the {} lane ({}); it will be redelivered", self.lane, exc
            )
            return False
        return True
