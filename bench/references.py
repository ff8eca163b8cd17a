"""The two references the worker is measured against, on the same broker in the same run.

- ceiling: bare aio-pika publishing persistent messages with confirms, the worker's in-flight
  window, and the very body sizes the worker published. Nothing a fan-out worker does can go faster
  through this broker from one Python process.
- naive baseline: the seed's "before" design. Per post, one uncached profile lookup; per follower,
  one message, each confirm awaited before the next.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

import aio_pika
import orjson

from bench.rig import AMQP_URL, BenchQueue
from worker.memory.stores import MemoryFollowerGraph, MemoryProfileSource

Tick = Callable[[int], None]


async def _channel(exchange: str) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractExchange]:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    return connection, await channel.get_exchange(exchange)


def _message(body: bytes, message_id: str) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        message_id=message_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def ceiling(sizes: Sequence[int], window: int, tick: Tick) -> dict[str, float]:
    """Publish one message per entry of ``sizes`` (bytes), ``window`` confirms in flight."""
    exchange = f"fanout.bench.ceiling.{uuid.uuid4().hex[:8]}"
    queue = await BenchQueue.declare(exchange)
    connection, ex = await _channel(exchange)
    pad = b"x" * max(sizes, default=1)
    slots = asyncio.Semaphore(window)
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, size: int) -> None:
        try:
            await ex.publish(_message(pad[:size], f"ceiling:{i}"), "post.created", mandatory=True)
        finally:
            slots.release()
            tick(1)

    try:
        started, cpu = time.perf_counter(), time.process_time()
        for i, size in enumerate(sizes):
            await slots.acquire()
            task = asyncio.create_task(one(i, size))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        delivered = await queue.drain_count()
    finally:
        await connection.close()
        await queue.delete(exchange)
    return {
        "messages": len(sizes),
        "delivered": delivered,
        "seconds": elapsed,
        "messages_per_s": len(sizes) / elapsed,
        "cpu_us_per_message": 1e6 * cpu / max(1, len(sizes)),
        "mean_bytes": sum(sizes) / max(1, len(sizes)),
    }


async def naive(
    posts: Sequence[tuple[str, str]],
    source: MemoryProfileSource,
    graph: MemoryFollowerGraph,
    budget: int,
    tick: Tick,
) -> dict[str, float]:
    """Fan ``posts`` (post id, author) out the naive way until ``budget`` messages are confirmed.

    Its cost is linear in followers, so the rate over the first ``budget`` messages is its rate.
    """
    exchange = f"fanout.bench.naive.{uuid.uuid4().hex[:8]}"
    queue = await BenchQueue.declare(exchange)
    connection, ex = await _channel(exchange)
    sent = lookups = 0
    try:
        started = time.perf_counter()
        for post_id, author in posts:
            lookups += 1
            snapshot = (await source.fetch_many([author])).get(author)
            async for page in graph.follower_pages(author):
                for follower in page:
                    body = orjson.dumps(
                        {
                            "schema": 1,
                            "type": "post.created",
                            "post": {
                                "id": post_id,
                                "author_id": author,
                                "text": f"post {post_id} by {author}",
                            },
                            "author": snapshot.to_dict() if snapshot else None,
                            "recipients": [follower],
                        }
                    )
                    message = _message(body, f"naive:{post_id}:{follower}")
                    await ex.publish(message, "post.created", mandatory=True)
                    sent += 1
                    tick(1)
                    if sent >= budget:
                        break
                if sent >= budget:
                    break
            if sent >= budget:
                break
        elapsed = time.perf_counter() - started
        delivered = await queue.drain_count()
    finally:
        await connection.close()
        await queue.delete(exchange)
    return {
        "messages": sent,
        "delivered": delivered,
        "lookups": lookups,
        "seconds": elapsed,
        "messages_per_s": sent / elapsed,
        # One recipient per message.
        "recipients_per_s": sent / elapsed,
    }
