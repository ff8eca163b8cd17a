"""The job queues between the tailer and the fan-out workers, on RabbitMQ.

``declare_job_topology`` declares, idempotently, from ``[fanout]``:

- the job exchange: durable ``topic`` (jobs are published with the ordinary RabbitPublisher, which
  declares its exchange so), routing keys ``ordinary``, ``bulk`` and ``deferred``;
- one quorum queue per lane, bound to its key, with ``x-delivery-limit`` (quorum queues count
  deliveries, so a job that keeps killing workers is dead-lettered and the lane moves on) and
  at-least-once dead-lettering (``x-dead-letter-strategy``, which RabbitMQ ≥ 3.10 accepts only
  with ``x-overflow = reject-publish``) into the job dead-letter exchange;
- that dead-letter exchange (durable ``fanout``) and its quorum queue: jobs are kept, never dropped;
- the delay queue, bound to ``deferred``: no consumer; its TTL (``defer_seconds``) dead-letters each
  job back to the bulk lane, at least once.

Lanes are separate queues, not priorities (quorum queues have none before 4.0): each has its own
consumers and prefetch, so a backlog of celebrity ranges never delays ordinary posts. A declaration
that disagrees with an existing queue or exchange raises ConfigError (worker/messaging/topology.py's guard).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from loguru import logger

from enrichment.errors import ServiceUnavailable
from handlers.jobs import DEFERRED, Lane
from worker import uris
from worker.failures import cause
from worker.messaging.topology import Declaration, guard, verify_declarations
from worker.observe.logs import redact
from worker.settings import FanoutSettings

SECTION: Final = "fanout"
REASON_HEADER: Final = "x-fanout-error"  # why the worker dead-lettered a job itself


def lane_queue(settings: FanoutSettings, lane: Lane) -> str:
    return settings.ordinary_queue if lane == "ordinary" else settings.bulk_queue


def prefetch(settings: FanoutSettings, lane: Lane) -> int:
    return settings.ordinary_prefetch if lane == "ordinary" else settings.bulk_prefetch


def lane_arguments(settings: FanoutSettings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": settings.dead_letter_exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def deferred_arguments(settings: FanoutSettings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": round(settings.defer_seconds * 1000),
        "x-dead-letter-exchange": settings.exchange,
        "x-dead-letter-routing-key": "bulk",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def _queue(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> AbstractQueue:
    return await guard(
        "queue",
        name,
        f"durable, {arguments}",
        channel.declare_queue(name, durable=True, arguments=arguments),
        section=SECTION,
    )


async def declare_job_topology(channel: AbstractChannel, settings: FanoutSettings) -> None:
    """Declare the job exchange, lanes, delay queue and dead-letter queue. Idempotent; does nothing
    when ``settings.declare`` is false. On ConfigError the channel is closed: open a new one."""
    if not settings.declare:
        return
    exchange = await guard(
        "exchange",
        settings.exchange,
        "durable topic",
        channel.declare_exchange(settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True),
        section=SECTION,
    )
    dlx = await guard(
        "exchange",
        settings.dead_letter_exchange,
        "durable fanout",
        channel.declare_exchange(settings.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True),
        section=SECTION,
    )
    dead = await _queue(channel, settings.dead_letter_queue, {"x-queue-type": "quorum"})
    await guard("queue", dead.name, "bound", dead.bind(dlx, routing_key=""), "bind", SECTION)
    bindings: list[tuple[str, str, dict[str, Any]]] = [
        (settings.ordinary_queue, "ordinary", lane_arguments(settings)),
        (settings.bulk_queue, "bulk", lane_arguments(settings)),
        (settings.deferred_queue, DEFERRED, deferred_arguments(settings)),
    ]
    for name, key, arguments in bindings:
        queue = await _queue(channel, name, arguments)
        await guard(
            "queue", name, f"bound to {key!r}", queue.bind(exchange, routing_key=key), "bind", SECTION
        )


async def ensure_job_topology(url: str, settings: FanoutSettings, timeout_seconds: float) -> None:
    """``declare_job_topology`` on a connection of its own. Raises ServiceUnavailable or ConfigError."""
    if not settings.declare:
        return
    try:
        connection = await aio_pika.connect(url, timeout=timeout_seconds)
        async with connection:
            channel = await asyncio.wait_for(connection.channel(), timeout_seconds)
            await asyncio.wait_for(declare_job_topology(channel, settings), timeout_seconds)
    except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        where = uris.validate_amqp(url).endpoints()
        raise ServiceUnavailable(f"RabbitMQ is unreachable: {where}: {cause(exc)}") from None


def job_declarations(settings: FanoutSettings) -> list[Declaration]:
    """What ``declare_job_topology`` declares, as a plan ``verify_declarations`` can check."""

    def queue(name: str, arguments: dict[str, Any]) -> Declaration:
        return Declaration(
            "queue",
            name,
            f"durable, {arguments}",
            lambda channel: channel.declare_queue(name, durable=True, arguments=arguments),
        )

    def exchange(name: str, kind: aio_pika.ExchangeType) -> Declaration:
        return Declaration(
            "exchange", name, f"durable {kind.value}", lambda c: c.declare_exchange(name, kind, durable=True)
        )

    return [
        exchange(settings.exchange, aio_pika.ExchangeType.TOPIC),
        exchange(settings.dead_letter_exchange, aio_pika.ExchangeType.FANOUT),
        queue(settings.dead_letter_queue, {"x-queue-type": "quorum"}),
        queue(settings.ordinary_queue, lane_arguments(settings)),
        queue(settings.bulk_queue, lane_arguments(settings)),
        queue(settings.deferred_queue, deferred_arguments(settings)),
    ]


async def verify_job_topology(connection: AbstractConnection, settings: FanoutSettings) -> None:
    """Raise ConfigError naming ``[fanout]`` if a job exchange or queue exists with other
    arguments (``fanout-worker check``). Creates nothing."""
    if settings.declare:
        await verify_declarations(connection, job_declarations(settings), SECTION)


async def delete_job_topology(url: str, settings: FanoutSettings, timeout_seconds: float) -> None:
    """Delete what ``declare_job_topology`` made (the demo's run-scoped queues). Best effort."""
    try:
        connection = await aio_pika.connect(url, timeout=timeout_seconds)
        async with connection:
            channel = await connection.channel()
            for queue in (
                settings.ordinary_queue,
                settings.bulk_queue,
                settings.deferred_queue,
                settings.dead_letter_queue,
            ):
                await channel.queue_delete(queue)
            await channel.exchange_delete(settings.exchange)
            await channel.exchange_delete(settings.dead_letter_exchange)
    except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        logger.warning("could not delete the demo's job queues ({})", type(exc).__name__)


async def open_lane(
    connection: AbstractConnection, settings: FanoutSettings, lane: Lane
) -> tuple[AbstractChannel, AbstractQueue]:
    """A channel of the lane's own, with its prefetch, and the lane's queue (declared passively: the
    topology is declared at start, and a consumer must not re-declare with other arguments)."""
    # on_return_raises: a dead-lettered copy nobody takes (the dead queue missing) must fail, so
    # the original is requeued, not acked and lost.
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.set_qos(prefetch_count=prefetch(settings, lane))
    queue = await channel.get_queue(lane_queue(settings, lane), ensure=True)
    return channel, queue


def delivery_count(message: AbstractIncomingMessage) -> int:
    """Earlier deliveries of this job: quorum queues count them in ``x-delivery-count`` (absent on
    the first); a classic queue only flags a redelivery."""
    count = (message.headers or {}).get("x-delivery-count")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    return 1 if message.redelivered else 0


async def dead_letter(
    channel: AbstractChannel, settings: FanoutSettings, message: AbstractIncomingMessage, reason: str
) -> None:
    """Put a copy of ``message`` in the job dead-letter exchange with ``reason`` in a header and wait
    for the broker's confirm; the caller acks the original afterwards. (A reject cannot carry a
    reason; a crash between the two leaves a redelivery, never a loss.)"""
    dlx = await channel.get_exchange(settings.dead_letter_exchange, ensure=False)
    headers = dict(message.headers or {})
    headers[REASON_HEADER] = redact(reason)[:1000]  # error texts may quote a URI
    copy = aio_pika.Message(
        message.body,
        headers=headers,
        # aiormq matches a returned message to its confirm by id: a foreign job may have none.
        message_id=message.message_id or f"dead:{uuid.uuid4().hex}",
        correlation_id=message.correlation_id,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await dlx.publish(copy, routing_key=message.routing_key or "")
