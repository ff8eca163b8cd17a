"""``fanout-worker demo``: the whole pipeline on the in-memory MongoDB stand-in.

It generates a social graph with skewed follower counts and a workload of posts and profile
edits, then runs the real Worker over it. Redis and RabbitMQ are used when reachable; otherwise
clearly labelled in-memory stand-ins take their place.
"""

from __future__ import annotations

import asyncio
import random
import textwrap
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError

from enrichment.errors import ServiceUnavailable
from worker.daemon import Worker
from worker.memory.db import MemoryDatabase
from worker.memory.feed import memory_feeds
from worker.memory.jobs import InlineJobQueue
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import (
    MemoryCheckpointStore,
    MemoryDeadLetters,
    MemoryFollowerGraph,
    MemoryPostStore,
    MemoryProfileSource,
)
from worker.messaging.jobs import delete_job_topology, ensure_job_topology
from worker.ports import ManagedPublisher
from worker.settings import Settings
from worker.wiring import (
    Runtime,
    Stores,
    assemble,
    close_later,
    fanout_runner,
    job_publisher,
    rabbit_publisher,
    redis_client,
)

PROVED = "what it proved"


@dataclass(frozen=True)
class Workload:
    users: int = 3_000
    posts: int = 1_500
    edits: int = 200
    seed: int = 7


def build_graph(db: MemoryDatabase, graph: MemoryFollowerGraph, w: Workload) -> list[str]:
    """Profiles for ``w.users`` users; follower counts follow a heavy-tailed (Pareto) law."""
    rng = random.Random(w.seed)
    users = [f"u{i:05d}" for i in range(w.users)]
    for user in users:
        db.insert(
            "profiles",
            {
                "_id": user,
                "username": user,
                "display_name": f"User {user}",
                "avatar_url": f"https://cdn.example/{user}/1.png",
                "version": 1,
            },
        )
    for user in users:
        count = min(w.users - 1, int(rng.paretovariate(1.1) * 2) - 2)
        if count > 0:
            graph.set_followers(user, [f for f in rng.sample(users, count + 1) if f != user][:count])
    return users


async def drive(db: MemoryDatabase, users: list[str], graph: MemoryFollowerGraph, w: Workload) -> None:
    """Write posts and profile edits in bursts, the way an app would."""
    rng = random.Random(w.seed + 1)
    weights = [1 + graph.count(u) ** 0.5 for u in users]
    authors = rng.choices(users, weights, k=w.posts)
    edit_at = set(rng.sample(range(w.posts), min(w.edits, w.posts)))
    versions: dict[str, int] = {}
    for i, author in enumerate(authors):
        db.insert("posts", {"_id": f"p{i:06d}", "author_id": author, "text": f"post {i}"})
        if i in edit_at:
            user = rng.choice(authors[: i + 1])
            versions[user] = versions.get(user, 1) + 1
            db.update(
                "profiles",
                user,
                {"display_name": f"User {user} v{versions[user]}", "version": versions[user]},
            )
        if i % 50 == 49:
            await asyncio.sleep(0.005)


async def _reachable_redis(settings: Settings) -> aioredis.Redis | None:
    client = redis_client(settings)
    try:
        await client.ping()
        return client
    except (RedisError, OSError):
        await client.aclose()
        return None


async def run_demo(settings: Settings, workload: Workload, use_services: bool = True) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    jobs_prefix = f"fanout.demo.{run_id}"  # run-scoped job queues, deleted at the end
    fanout = settings.fanout.model_copy(
        update={
            "role": "all",
            "exchange": f"{jobs_prefix}.jobs",
            "ordinary_queue": f"{jobs_prefix}.ordinary",
            "bulk_queue": f"{jobs_prefix}.bulk",
            "deferred_queue": f"{jobs_prefix}.deferred",
            "dead_letter_exchange": f"{jobs_prefix}.dlx",
            "dead_letter_queue": f"{jobs_prefix}.dead",
            # Small ranges, so the demo's bigger authors show the bulk lane at work.
            "range_size": min(settings.fanout.range_size, 500),
        }
    )
    settings = settings.model_copy(
        update={
            "fanout": fanout,
            "redis": settings.redis.model_copy(update={"key_prefix": f"fanout-demo:{run_id}:"}),
            "rabbitmq": settings.rabbitmq.model_copy(update={"exchange": "social.fanout.demo"}),
            # The generated graph is written just before start: it is setup, not workload.
            "pipeline": settings.pipeline.model_copy(update={"first_start_lookback_seconds": 0}),
        }
    )
    db = MemoryDatabase()
    graph = MemoryFollowerGraph()
    users = build_graph(db, graph, workload)
    source = MemoryProfileSource(db)
    posts = MemoryPostStore(db)
    stores = Stores(source, posts, graph, MemoryCheckpointStore(), MemoryDeadLetters())
    feeds = memory_feeds(db)
    redis = await _reachable_redis(settings) if use_services else None
    publisher: ManagedPublisher = rabbit_publisher(settings)
    jobs: ManagedPublisher | None = job_publisher(settings)
    url, timeout = settings.rabbitmq.url.get_secret_value(), settings.rabbitmq.confirm_timeout_seconds
    consumer: _DemoConsumer | None = None
    try:
        if not use_services:
            raise ServiceUnavailable("services disabled")
        consumer = await _DemoConsumer.start(settings)
        await publisher.connect()
        await ensure_job_topology(url, fanout, timeout)
        assert jobs is not None
        await jobs.connect()
    except ServiceUnavailable:
        publisher = MemoryPublisher(settings.rabbitmq.publish_window)
        jobs = None  # jobs run inline (worker/memory/jobs.py)
        consumer = None
    runtime = assemble(settings, feeds, stores, publisher, redis, jobs=jobs)
    if jobs is not None:
        runtime.fanout = fanout_runner(settings, graph, publisher, runtime.posts.stats)
    if redis is not None:
        close_later(runtime.resources, "Redis", redis.aclose)
    runtime.labels = {
        "mongodb": "in-memory stand-in (not MongoDB)",
        "redis": "Redis" if redis is not None else "none (L1 + source only)",
        "rabbitmq": "RabbitMQ" if consumer is not None else "in-memory stand-in (not RabbitMQ)",
        "jobs": "RabbitMQ job queues, fan-out workers in this process"
        if jobs is not None
        else "in-memory stand-in: inline, no queue (not RabbitMQ)",
    }
    for name, label in runtime.labels.items():
        logger.info("demo: {} → {}", name, label)

    worker = Worker(runtime)
    started = time.perf_counter()
    run = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)  # let both streams open before the first write
    await drive(db, users, graph, workload)
    await _wait_until_done(runtime, worker, workload)
    worker.stop.set()
    await run
    elapsed = time.perf_counter() - started
    received = await consumer.finish() if consumer is not None else None
    if jobs is not None:
        await delete_job_topology(url, fanout, timeout)
    return _summary(runtime, db, source, elapsed, received, workload)


async def _wait_until_done(runtime: Runtime, worker: Worker, w: Workload, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        handled = sum(p.stats.handled + p.stats.dead_lettered for p in worker.pipelines)
        tailed = handled >= w.posts + min(w.edits, w.posts) and all(
            p.in_flight == 0 for p in worker.pipelines
        )
        if tailed and _jobs_done(runtime):
            return
        await asyncio.sleep(0.05)
    logger.warning("demo: gave up waiting for the pipeline to finish")


def _jobs_done(runtime: Runtime) -> bool:
    """Every job the tailer emitted was acked by a fan-out worker (inline jobs are done when emitted)."""
    runner = runtime.fanout
    if runner is None:
        return True
    acked = sum(c.stats.jobs_acked + c.stats.dead_lettered for c in runner.consumers.values())
    return acked >= runtime.posts.emitter.stats.jobs


def _per_lane(runtime: Runtime) -> dict[str, str]:
    """Jobs and chunks per fan-out consumer (lane)."""
    rows: dict[str, str] = {}
    if runtime.fanout is not None:
        for lane, consumer in sorted(runtime.fanout.consumers.items()):
            c = consumer.stats
            rows[f"  {lane} lane"] = f"{c.jobs_acked} jobs, {c.chunks} chunks, {c.recipients} recipients"
    elif isinstance(runtime.jobs, InlineJobQueue):
        for name, counts in sorted(runtime.jobs.inline.lanes.items()):
            line = f"{counts.jobs} jobs, {counts.chunks} chunks, {counts.recipients} recipients"
            rows[f"  {name} (inline)"] = line
    return rows


def _summary(
    runtime: Runtime,
    db: MemoryDatabase,
    source: MemoryProfileSource,
    elapsed: float,
    received: int | None,
    workload: Workload,
) -> dict[str, Any]:
    ps, pr, cs = runtime.posts.stats, runtime.profiles.stats, runtime.cache.stats
    es = runtime.posts.emitter.stats
    profiles = db.collection("profiles")
    current = sum(
        1
        for doc in db.collection("posts").values()
        if (doc.get("author_snapshot") or {}).get("version") == profiles[doc["author_id"]]["version"]
    )
    return {
        "services": runtime.labels,
        "posts handled": ps.posts,
        "fan-out jobs (ordinary / bulk lane)": f"{es.ordinary} / {es.bulk} (most ranges in one post: "
        f"{es.largest_post_ranges})",
        "jobs and chunks per consumer": _per_lane(runtime),
        "messages published (confirmed)": runtime.publisher.stats.confirmed,
        "messages received by the demo queue": received if received is not None else "n/a",
        "recipients": ps.recipients,
        "cache hits L1 / L2 / L3": f"{cs.l1_hits} / {cs.l2_hits} / {cs.l3_hits}",
        "users not found": cs.not_found,
        "source queries (L3)": source.queries,
        "Redis MGETs (L2)": runtime.cache.l2.mget_calls if runtime.cache.l2 else 0,
        "snapshots written at post time": ps.snapshots_written,
        "profile changes cascaded / ignored": f"{pr.changes} / {pr.ignored}",
        "snapshots rewritten by cascades": pr.posts_rewritten,
        "posts holding the current snapshot": f"{current} / {len(db.collection('posts'))}",
        "elapsed": f"{elapsed:.2f}s ({ps.posts / elapsed:.0f} posts/s)",
        PROVED: proved(
            workload.posts,
            ps.posts,
            ps.recipients,
            runtime.publisher.stats.confirmed,
            received,
            runtime.labels["jobs"],
            pr.changes,
            current,
            len(db.collection("posts")),
        ),
    }


def proved(
    written: int,
    handled: int,
    recipients: int,
    confirmed: int,
    received: int | None,
    jobs: str,
    cascaded: int,
    current: int,
    posts: int,
) -> str:
    """Two plain sentences on what the run showed, saying so when it fell short."""
    route = "RabbitMQ job queues" if jobs.startswith("RabbitMQ") else "inline jobs (no RabbitMQ)"
    if handled == written:
        first = f"All {written} posts written to the in-memory MongoDB stand-in were enriched"
    else:
        first = f"Only {handled} of the {written} posts written were enriched (see the warnings above)"
    first += f" and fanned out through {route} to {recipients} recipients, in {confirmed} confirmed messages"
    if received is None:
        first += " (no consumer queue: not counted on arrival)."
    elif received == confirmed:
        first += ", every one of them received."
    else:
        first += f", of which {received} were received."
    if current == posts:
        second = (
            f"The {cascaded} profile changes cascaded into the posts already written, so every post "
            "holds its author's current snapshot."
        )
    else:
        second = (
            f"After {cascaded} profile changes cascaded, {current} of {posts} posts hold their author's "
            "current snapshot: the others are stale."
        )
    return f"{first} {second}"


class _DemoConsumer:
    """A temporary queue bound to the demo exchange, so messages are routable and counted."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, queue: aio_pika.abc.AbstractQueue):
        self._connection = connection
        self._queue = queue
        self.count = 0

    @classmethod
    async def start(cls, settings: Settings) -> _DemoConsumer:
        try:
            connection = await aio_pika.connect(settings.rabbitmq.url.get_secret_value(), timeout=3)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            raise ServiceUnavailable(f"RabbitMQ unreachable: {type(exc).__name__}") from None
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            settings.rabbitmq.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "#")
        consumer = cls(connection, queue)
        await queue.consume(consumer._on_message, no_ack=True)
        return consumer

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.count += 1

    async def finish(self) -> int:
        await asyncio.sleep(0.5)  # deliveries still on the wire
        await self._connection.close()
        return self.count


def print_summary(summary: dict[str, Any]) -> None:
    print("\nfanout-worker demo summary")
    print("-" * 60)
    for key, value in summary.items():
        if key == PROVED:
            continue
        if isinstance(value, dict):
            for name, label in value.items():
                print(f"{name + ':':<40} {label}")
        else:
            print(f"{key + ':':<40} {value}")
    if PROVED in summary:
        print("\n" + textwrap.fill(summary[PROVED], width=100))
