"""Publishing to RabbitMQ with publisher confirms, a bounded window, timeouts and re-publish.

Each message is retried until the broker confirms it: a lost connection, a timeout or a nack
leads to a reconnect with capped, jittered backoff and a re-publish under the same ``message_id``
(consumers de-duplicate). While the broker is away the window fills up, handlers block on
``send`` and the dispatcher stops reading: that is the backpressure. Unroutable messages are
logged at ERROR and counted; they are not retried, since no queue would take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError
from loguru import logger

from enrichment.backoff import Backoff
from enrichment.errors import ConfigError, PublishFailed, ServiceUnavailable
from handlers.ports import OutgoingMessage
from worker import uris
from worker.failures import cause
from worker.messaging.topology import guard
from worker.ports import PublishStats
from worker.shutdown import SETTLE_SECONDS, raise_if_cancelling, settle

CLOSE_SECONDS = 1.0  # closing the connection at shutdown: a dead broker does not answer


class RabbitPublisher:
    """Confirmed publishes to one durable topic exchange."""

    def __init__(
        self,
        url: str,
        exchange: str,
        window: int,
        confirm_timeout_seconds: float,
        reconnect_max_seconds: float,
        unroutable_fails: bool = False,
        stamped: bool = False,
        route: Callable[[OutgoingMessage], str] | None = None,
    ) -> None:
        self._url = url
        # Jobs: the AMQP timestamp (whole seconds) tells a fan-out worker how long a job waited.
        self._stamped = stamped
        self._route = route  # the routing key to publish under (default: the message's own)
        # Jobs: an unroutable job would be a lost post, so it fails its publish (and the post is
        # retried, then dead-lettered) instead of being logged and dropped like a message nobody binds.
        self._unroutable_fails = unroutable_fails
        self._exchange_name = exchange
        self._timeout = confirm_timeout_seconds
        self._slots = asyncio.Semaphore(window)
        self._backoff = Backoff(0.2, reconnect_max_seconds)
        self._lock = asyncio.Lock()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._unblock_watch: asyncio.Task[None] | None = None  # shared by every publish that waits
        self.stats = PublishStats()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def check(self) -> bool:
        """Readiness: connected now, or able to connect."""
        if not self.connected:
            await self._exchange_ready(retry=False)
        return self.connected

    async def connect(self) -> None:
        """Connect and declare the exchange once; raises if the broker cannot be reached now."""
        await self._exchange_ready(retry=False)

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        if self._closed:
            raise RuntimeError("publisher is closed")
        await self._slots.acquire()
        task = asyncio.create_task(self._deliver(message), name=f"publish {message.message_id}")
        self._tasks.add(task)
        task.add_done_callback(self._release)
        return task

    def _release(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _deliver(self, message: OutgoingMessage) -> None:
        body = aio_pika.Message(
            message.body,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            timestamp=time.time() if self._stamped else None,
        )
        routing_key = message.routing_key if self._route is None else self._route(message)
        while True:
            # Fast path while connected: no lock, no coroutine per message.
            exchange, generation = self._exchange, self._generation
            if exchange is None:
                exchange, generation = await self._exchange_ready(retry=True)
            if self.blocked:
                await self._wait_unblocked()
            self.stats.sent += 1
            try:
                await exchange.publish(body, routing_key, mandatory=True, timeout=self._timeout)
            except PublishError:
                self.stats.returned += 1
                logger.error(
                    "unroutable message {} (routing key {}): no queue is bound to exchange {}",
                    message.message_id,
                    routing_key,
                    self._exchange_name,
                )
                if self._unroutable_fails:
                    raise PublishFailed(
                        f"unroutable: no queue is bound to exchange {self._exchange_name} "
                        f"for routing key {routing_key}"
                    ) from None
                return
            except DeliveryError:
                self.stats.nacked += 1
                logger.warning("broker nacked {}; re-publishing", message.message_id)
            except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                raise_if_cancelling()  # RuntimeError is among CONNECTION_EXCEPTIONS
                if isinstance(exc, TimeoutError) and self.blocked:
                    continue  # paused by the broker mid-publish: wait for unblock, then re-publish
                logger.warning(
                    "publish of {} not confirmed ({}); reconnecting and re-publishing",
                    message.message_id,
                    type(exc).__name__,
                )
                await self._invalidate(generation)
            else:
                self.stats.confirmed += 1
                return
            self.stats.retried += 1
            await asyncio.sleep(self._backoff.next_delay())

    @property
    def blocked(self) -> bool:
        """The broker sent connection.blocked (memory or disk alarm) and has not unblocked yet."""
        transport = getattr(self._connection, "transport", None)
        return connection_blocked(getattr(transport, "connection", None))

    async def _wait_unblocked(self) -> None:
        """Wait for the end of a blocked episode. The first publish to meet it starts one watcher;
        the others (up to the whole window) wait on it, so an episode logs one line, not hundreds."""
        watch = self._unblock_watch
        if watch is None or watch.done():
            if not self.blocked:
                return
            watch = self._unblock_watch = asyncio.create_task(self._watch_blocked(), name="rabbitmq blocked")
        # shield: a publish cancelled while waiting must not end the episode for the others.
        await asyncio.shield(watch)

    async def _watch_blocked(self) -> None:
        self.stats.blocked_pauses += 1
        logger.warning("RabbitMQ blocked this connection (resource alarm); publishing paused")
        started = last = time.monotonic()
        # Polled: aiormq has no public blocked/unblocked callback (see connection_blocked); polling
        # also ends the wait if the connection dies while blocked.
        while self.blocked and self._connection is not None and not self._connection.is_closed:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            self.stats.blocked_seconds += now - last
            last = now
        logger.info(
            "RabbitMQ unblocked the connection after {:.1f}s; publishing resumed", time.monotonic() - started
        )

    async def _exchange_ready(self, retry: bool) -> tuple[AbstractExchange, int]:
        async with self._lock:
            while self._exchange is None:
                if self._closed:  # the reconnect loop ends with the publisher
                    raise ServiceUnavailable("RabbitMQ publisher is closed")
                try:
                    await self._open()
                    self._backoff.reset()
                except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                    raise_if_cancelling()
                    await self._drop_connection()
                    if not retry:
                        where = uris.validate_amqp(self._url).endpoints()
                        raise ServiceUnavailable(f"RabbitMQ is unreachable: {where}: {cause(exc)}") from None
                    delay = self._backoff.next_delay()
                    logger.warning(
                        "RabbitMQ unreachable ({}); retrying in {:.1f}s", type(exc).__name__, delay
                    )
                    await asyncio.sleep(delay)
                except ConfigError as exc:  # the exchange exists with another type (406)
                    await self._drop_connection()
                    if not retry:
                        raise
                    delay = self._backoff.next_delay()
                    logger.error("{}; retrying in {:.1f}s", exc, delay)
                    await asyncio.sleep(delay)
            return self._exchange, self._generation

    async def _open(self) -> None:
        self._connection = await aio_pika.connect(self._url, timeout=self._timeout)
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        declare = self._channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._exchange = await guard("exchange", self._exchange_name, "durable topic", declare)
        self._generation += 1
        if self._generation > 1:
            self.stats.reconnects += 1
            logger.info("reconnected to RabbitMQ")

    async def _invalidate(self, generation: int) -> None:
        """Drop the connection a failed publish used, unless another task already replaced it."""
        async with self._lock:
            if generation == self._generation and self._exchange is not None:
                await self._drop_connection()

    async def _drop_connection(self, wait_seconds: float | None = None) -> None:
        connection, self._connection = self._connection, None
        self._channel = None
        self._exchange = None
        if connection is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(wait_seconds or self._timeout):
                    await connection.close()

    async def close(self, drain_seconds: float = 0.0) -> None:
        """Wait up to ``drain_seconds`` for confirms in flight, cancel the rest, disconnect."""
        self._closed = True
        if self._tasks and drain_seconds > 0:
            await asyncio.wait(list(self._tasks), timeout=drain_seconds)
        watch = [self._unblock_watch] if self._unblock_watch is not None else []
        await settle([*self._tasks, *watch], SETTLE_SECONDS)
        # Not under the lock: a reconnect loop holds it for as long as the broker is down.
        await self._drop_connection(CLOSE_SECONDS)


def connection_blocked(connection: object) -> bool:
    """Whether an aiormq connection is blocked by the broker (connection.blocked received, no
    connection.unblocked yet).

    Neither aiormq nor aio-pika exposes this (aiormq 7.2 only waits on it, in ``ready()`` and its
    writer), so this reads aiormq's private event. The aiormq version is pinned in pyproject.toml,
    and tests/worker/messaging/test_publisher_blocked.py drives real Blocked/Unblocked frames through aiormq's
    reader to catch a version that renames it. Unknown shapes read as "not blocked": publishing
    then waits in aiormq itself, and the confirm timeout still applies.
    """
    event = getattr(connection, "_Connection__connection_unblocked", None)
    return isinstance(event, asyncio.Event) and not event.is_set()
