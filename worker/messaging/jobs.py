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
  job back to the bulk lane, at least once;
- the backfill lane (``backfill_queue``, key ``backfill``): the repair commands' jobs, byte for byte
  the jobs live handling publishes, consumed with their own small prefetch so live traffic keeps
  its latency.

Lanes are separate queues, not priorities (quorum queues have none before 4.0): each has its own
consumers and prefetch, so a backlog of celebrity ranges never delays ordinary posts.

The bulk lane is ``bulk_shards`` queues: ``bulk_queue`` bound to ``bulk`` (shard 0, what a
one-shard topology and the delay queue use) and ``{bulk_queue}.{k}`` bound to ``bulk.{k}``. The job
publisher sends each big post's ranges to one shard and the next post's to the next
(``BulkShards``); a worker consumes every shard with the lane's prefetch on each, so two celebrities
posting at once are fanned out side by side instead of one after the other. A declaration
that disagrees with an existing queue or exchange raises ConfigError (worker/messaging/topology.py's guard).
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from loguru import logger

from handlers.jobs import DEFERRED, Lane
from handlers.ports import OutgoingMessage
from worker.messaging.topology import (
    Declaration,
    declare_on_own_connection,
    exchange_declaration,
    guard,
    queue_declaration,
    verify_declarations,
)
from worker.observe.logs import redact
from worker.settings import FanoutSettings

SECTION: Final = "fanout"
BACKFILL: Final = "backfill"  # routing key and lane of the repair jobs
CONSUMED_LANES: Final[tuple[Lane, ...]] = ("ordinary", "bulk", BACKFILL)  # what fan-out workers consume
REASON_HEADER: Final = "x-fanout-error"  # why the worker dead-lettered a job itself


def bulk_key(shard: int) -> str:
    """The routing key of a bulk shard: ``bulk`` for shard 0, which jobs from before shards use."""
    return "bulk" if shard == 0 else f"bulk.{shard}"


def bulk_queues(settings: FanoutSettings) -> list[str]:
    """The bulk lane's queues, shard 0 first."""
    return [settings.bulk_queue, *(f"{settings.bulk_queue}.{k}" for k in range(1, settings.bulk_shards))]


def backfill_queue(settings: FanoutSettings) -> str:
    return settings.backfill_queue or f"{settings.exchange}.backfill"


def lane_queues(settings: FanoutSettings, lane: Lane) -> list[str]:
    """The lane's queues: one, or the bulk lane's shards."""
    if lane == BACKFILL:
        return [backfill_queue(settings)]
    return [settings.ordinary_queue] if lane == "ordinary" else bulk_queues(settings)


class BulkShards:
    """Picks each bulk job's shard: every range of a post to the same one, consecutive posts to the
    next one round the ring. Remembers the last ``memory`` posts (bounded); a post forgotten and
    replayed may land on another shard, which changes nothing but where it waits."""

    def __init__(self, shards: int, memory: int = 4096) -> None:
        self._shards = shards
        self._memory = memory
        self._next = 0
        self._assigned: dict[str, int] = {}  # insertion-ordered: the oldest is evicted first

    def routing_key(self, message: OutgoingMessage) -> str:
        if message.routing_key != "bulk" or self._shards == 1:
            return message.routing_key
        post = message.correlation_id
        shard = self._assigned.get(post)
        if shard is None:
            shard, self._next = self._next, (self._next + 1) % self._shards
            self._assigned[post] = shard
            if len(self._assigned) > self._memory:
                del self._assigned[next(iter(self._assigned))]
        return bulk_key(shard)


def prefetch(settings: FanoutSettings, lane: Lane) -> int:
    if lane == BACKFILL:
        return settings.backfill_prefetch
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


def job_declarations(settings: FanoutSettings) -> list[Declaration]:
    """The job exchange, its dead-letter exchange and queue, the two lanes, the delay queue and the
    backfill lane, in the order they are declared (and verified by ``fanout-worker check``)."""
    exchange, queue = exchange_declaration, queue_declaration
    return [
        exchange(settings.exchange, aio_pika.ExchangeType.TOPIC),
        exchange(settings.dead_letter_exchange, aio_pika.ExchangeType.FANOUT),
        queue(settings.dead_letter_queue, True, {"x-queue-type": "quorum"}),
        queue(settings.ordinary_queue, True, lane_arguments(settings)),
        *(queue(name, True, lane_arguments(settings)) for name in bulk_queues(settings)),
        queue(settings.deferred_queue, True, deferred_arguments(settings)),
        queue(backfill_queue(settings), True, lane_arguments(settings)),
    ]


async def declare_job_topology(channel: AbstractChannel, settings: FanoutSettings) -> None:
    """Declare the job topology and bind it. Idempotent; does nothing when ``settings.declare``
    is false. On ConfigError the channel is closed: open a new one."""
    if not settings.declare:
        return
    declared = [
        await guard(d.kind, d.name, d.wanted, d.declare(channel), section=SECTION)
        for d in job_declarations(settings)
    ]
    jobs, dlx, dead, ordinary, *bulk, deferred, backfill = declared
    for queue, source, key in (
        (dead, dlx, ""),
        (ordinary, jobs, "ordinary"),
        *((shard, jobs, bulk_key(k)) for k, shard in enumerate(bulk)),
        (deferred, jobs, DEFERRED),
        (backfill, jobs, BACKFILL),
    ):
        bind = queue.bind(source, routing_key=key)
        await guard("queue", queue.name, f"bound to {key!r}", bind, "bind", SECTION)


async def ensure_job_topology(url: str, settings: FanoutSettings, timeout_seconds: float) -> None:
    """``declare_job_topology`` on a connection of its own. Raises ServiceUnavailable or ConfigError."""
    if settings.declare:
        await declare_on_own_connection(
            url, timeout_seconds, lambda channel: declare_job_topology(channel, settings)
        )


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
            for d in reversed(job_declarations(settings)):  # queues first, then their exchanges
                if d.kind == "queue":
                    await channel.queue_delete(d.name)
                else:
                    await channel.exchange_delete(d.name)
    except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        logger.warning("could not delete the demo's job queues ({})", type(exc).__name__)


async def open_lane(
    connection: AbstractConnection, settings: FanoutSettings, lane: Lane
) -> tuple[AbstractChannel, list[AbstractQueue]]:
    """A channel of the lane's own, with its prefetch (per consumer: per queue of the lane), and the
    lane's queues (declared passively: the topology is declared at start, and a consumer must not
    re-declare with other arguments)."""
    # on_return_raises: a dead-lettered copy nobody takes (the dead queue missing) must fail, so
    # the original is requeued, not acked and lost.
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.set_qos(prefetch_count=prefetch(settings, lane))
    queues = [await channel.get_queue(name, ensure=True) for name in lane_queues(settings, lane)]
    return channel, queues


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
