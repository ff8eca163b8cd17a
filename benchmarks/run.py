"""Benchmarks: pipeline throughput, batching cost, and fan-out memory for a celebrity.

    python -m benchmarks.run           # full sizes, checks the targets, exits 1 on a miss
    python -m benchmarks.run --smoke   # tiny sizes, what CI runs: proves the benchmarks still work

Runs on the in-memory MongoDB and RabbitMQ stand-ins (labelled as such) so the numbers measure
fanout-worker itself, not the machine's brokers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import tracemalloc

from loguru import logger

from enrichment.cache import LayeredCache
from enrichment.memory import MemoryLayer
from handlers.events import NewPost
from handlers.posts import PostCreatedHandler
from worker.adapters.memory_db import MemoryDatabase
from worker.adapters.memory_stores import MemoryFollowerGraph, MemoryPostStore, MemoryProfileSource
from worker.demo import Workload, run_demo
from worker.settings import Settings

MEMORY_BOUND_BYTES = 16 * 1024 * 1024  # peak growth allowed during one fan-out, whatever its size


async def bench_pipeline(posts: int, users: int) -> dict[str, float]:
    """The whole worker over the in-memory stand-ins, Redis and RabbitMQ left out."""
    summary = await run_demo(Settings(), Workload(users=users, posts=posts, edits=posts // 10), False)
    seconds = float(summary["elapsed"].split("s", 1)[0])
    return {
        "posts": posts,
        "posts_per_s": posts / seconds,
        "source_queries": summary["source queries (L3)"],
        "recipients": summary["recipients"],
    }


async def bench_celebrity(followers: int) -> dict[str, float]:
    """Peak traced memory while fanning one post out to ``followers`` followers."""
    from worker.publisher import MemoryPublisher

    db = MemoryDatabase()
    db.insert("profiles", {"_id": "star", "username": "star", "display_name": "Star", "version": 1})
    db.insert("posts", {"_id": "p1", "author_id": "star", "text": "hi"})
    graph = MemoryFollowerGraph()
    graph.set_followers("star", [f"f{i:08d}" for i in range(followers)])
    publisher = MemoryPublisher(window=64, keep=False)
    cache = LayeredCache(MemoryLayer(10, 60, 10), None, MemoryProfileSource(db))
    handler = PostCreatedHandler(cache, MemoryPostStore(db), graph, publisher, chunk_size=1000)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    started = time.perf_counter()
    results: list[BaseException | None] = [None]
    await handler.handle_batch([NewPost("p1", "star", "hi", None)], results.__setitem__)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert results == [None] and handler.stats.recipients == followers
    return {
        "followers": followers,
        "messages": publisher.stats.confirmed,
        "peak_growth_mb": (peak - base) / 2**20,
        "recipients_per_s": followers / elapsed,
    }


async def bench_rabbit(messages: int, window: int) -> float:
    """Confirmed persistent publishes per second through RabbitPublisher to the local broker."""
    import uuid

    import aio_pika

    from handlers.ports import OutgoingMessage
    from worker.publisher import RabbitPublisher

    url = "amqp://guest:guest@127.0.0.1:5672/"
    exchange = f"bench.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"{exchange}.q", durable=True)
    await queue.bind(ex, "#")
    publisher = RabbitPublisher(url, exchange, window, 30.0, 2.0)
    await publisher.connect()
    body = b'{"schema":1,"recipients":["' + b'","'.join(b"u%07d" % i for i in range(100)) + b'"]}'
    started = time.perf_counter()
    pending = [
        await publisher.send(OutgoingMessage("post.created", f"bench:{i}", "bench", body))
        for i in range(messages)
    ]
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    await publisher.close()
    await queue.delete(if_unused=False, if_empty=False)
    await channel.exchange_delete(exchange)
    await connection.close()
    return messages / elapsed


async def main(smoke: bool) -> int:
    logger.remove()
    pipeline = await bench_pipeline(posts=300 if smoke else 20_000, users=500 if smoke else 5_000)
    small = await bench_celebrity(10_000 if smoke else 100_000)
    large = await bench_celebrity(50_000 if smoke else 1_000_000)
    print("benchmark (in-memory MongoDB and RabbitMQ stand-ins, no Redis)")
    print(
        f"  pipeline: {pipeline['posts']:.0f} posts at {pipeline['posts_per_s']:,.0f} posts/s, "
        f"{pipeline['source_queries']} source queries, {pipeline['recipients']:,} recipients"
    )
    for r in (small, large):
        print(
            f"  celebrity: {r['followers']:>9,.0f} followers → {r['messages']:,.0f} messages, "
            f"peak growth {r['peak_growth_mb']:.2f} MB, {r['recipients_per_s']:,.0f} recipients/s"
        )
    if smoke:
        return 0
    windowed = await bench_rabbit(5_000, 256)
    serial = await bench_rabbit(1_000, 1)
    print("benchmark (real RabbitMQ on 127.0.0.1, durable queue, persistent messages, confirms)")
    print(f"  publish window 256: {windowed:,.0f} msg/s;  window 1: {serial:,.0f} msg/s")
    failures = []
    if large["peak_growth_mb"] * 2**20 > MEMORY_BOUND_BYTES:
        failures.append(f"1M-follower fan-out grew {large['peak_growth_mb']:.1f} MB (bound 16 MB)")
    if large["peak_growth_mb"] > 2 * small["peak_growth_mb"] + 1:
        failures.append("fan-out memory grows with the follower count")
    for failure in failures:
        print(f"  MISS: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no targets (CI)")
    sys.exit(asyncio.run(main(parser.parse_args().smoke)))
