"""The real worker wired for measurement: in-memory MongoDB stand-ins, real Redis and RabbitMQ.

The MongoDB side is the in-memory stand-in (NOT MongoDB) so that what is timed is the worker's own
cost plus the real brokers', not a database's. Messages go to one durable lazy queue bound to the
exchange with ``#``; it is counted after each phase (every confirmed message must be there), then
purged so the broker does not carry gigabytes from one phase into the next.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from array import array
from typing import Any

import aio_pika
import redis.asyncio as aioredis

from bench.graph import SocialGraph, profile
from bench.probes import DoneTimes, RedisRoundTrips
from handlers.ports import OutgoingMessage
from worker.daemon import Worker, tune_gc
from worker.memory.db import MemoryDatabase
from worker.memory.feed import memory_feeds
from worker.memory.stores import (
    MemoryCheckpointStore,
    MemoryDeadLetters,
    MemoryFollowerGraph,
    MemoryPostStore,
    MemoryProfileSource,
)
from worker.messaging.jobs import delete_job_topology, ensure_job_topology
from worker.settings import Settings
from worker.streams import POSTS, PROFILES
from worker.wiring import (
    Runtime,
    Stores,
    assemble,
    job_publisher,
    rabbit_publisher,
    redis_client,
)

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def bench_settings(base: Settings, run_id: str) -> Settings:
    """The worker's settings, on keys, exchanges and job queues of this run's own."""
    jobs = f"fanout.bench.{run_id}.jobs"
    return base.model_copy(
        update={
            "fanout": base.fanout.model_copy(
                update={
                    "exchange": jobs,
                    "ordinary_queue": f"{jobs}.ordinary",
                    "bulk_queue": f"{jobs}.bulk",
                    "deferred_queue": f"{jobs}.deferred",
                    "dead_letter_exchange": f"{jobs}.dlx",
                    "dead_letter_queue": f"{jobs}.dead",
                }
            ),
            "redis": base.redis.model_copy(update={"key_prefix": f"fanout-bench:{run_id}:"}),
            "rabbitmq": base.rabbitmq.model_copy(update={"exchange": f"fanout.bench.{run_id}"}),
            # The graph is written just before start: setup, not workload.
            "pipeline": base.pipeline.model_copy(update={"first_start_lookback_seconds": 0}),
        }
    )


class BenchQueue:
    """One durable lazy queue that takes every message published to an exchange."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, name: str) -> None:
        self._connection = connection
        self.name = name
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    @classmethod
    async def declare(cls, exchange: str) -> BenchQueue:
        connection = await aio_pika.connect(AMQP_URL)
        bench = cls(connection, f"{exchange}.all")
        bench._channel = await connection.channel()
        ex = await bench._channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        bench._queue = await bench._channel.declare_queue(
            bench.name, durable=True, arguments={"x-queue-mode": "lazy"}
        )
        await bench._queue.bind(ex, "#")
        return bench

    async def drain_count(self) -> int:
        """Messages now in the queue; then empties it."""
        assert self._queue is not None and self._channel is not None
        declared = await self._channel.declare_queue(self.name, passive=True)
        count = declared.declaration_result.message_count or 0
        await self._queue.purge()
        return count

    async def delete(self, exchange: str) -> None:
        assert self._queue is not None and self._channel is not None
        await self._queue.delete(if_unused=False, if_empty=False)
        await self._channel.exchange_delete(exchange)
        await self._connection.close()


class Rig:
    """One worker over a social graph; the bench writes posts and edits and reads the timings."""

    def __init__(self, base: Settings, graph: SocialGraph | None, tailer: bool = False) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.settings = bench_settings(base, self.run_id)
        # tailer: the real job path, this process as `--role tailer` (jobs on this run's own RabbitMQ
        # queues, for fan-out processes to consume: bench/scaleout.py); else jobs run inline.
        self.tailer = tailer
        if tailer:
            fanout = self.settings.fanout.model_copy(update={"role": "tailer"})
            self.settings = self.settings.model_copy(update={"fanout": fanout})
        self.graph = graph
        self.db = MemoryDatabase()
        self.follows = MemoryFollowerGraph()
        self.source = MemoryProfileSource(self.db)
        self.post_store = MemoryPostStore(self.db)
        self.offered: dict[str, float] = {}  # post id → when it was written
        self.edited: dict[tuple[str, int], float] = {}  # (user, version) → when it was written
        self.versions: dict[str, int] = {}
        self.sizes = array("I")  # body size of every message the worker published
        self._next_post = 0
        self.redis: aioredis.Redis | None = None
        self.queue: BenchQueue | None = None
        self.runtime: Runtime | None = None
        self.worker: Worker | None = None
        self.done: DoneTimes | None = None
        self.round_trips: RedisRoundTrips | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.graph is not None:
            self.graph.load(self.db, self.follows)
        self.redis = redis_client(self.settings)
        await self.redis.ping()
        self.round_trips = RedisRoundTrips(self.redis)
        self.queue = await BenchQueue.declare(self.settings.rabbitmq.exchange)
        publisher = rabbit_publisher(self.settings)
        await publisher.connect()
        self._record_sizes(publisher)
        stores = Stores(
            self.source, self.post_store, self.follows, MemoryCheckpointStore(), MemoryDeadLetters()
        )
        feeds = memory_feeds(self.db)
        jobs = None
        if self.tailer:
            q = self.settings.rabbitmq
            await ensure_job_topology(
                q.url.get_secret_value(), self.settings.fanout, q.confirm_timeout_seconds
            )
            jobs = job_publisher(self.settings)
            await jobs.connect()
        self.runtime = assemble(self.settings, feeds, stores, publisher, self.redis, jobs=jobs)
        self.posts = self.runtime.posts  # the real handler, for its counters
        self.done = DoneTimes(self.posts)
        self.runtime.handlers = {**self.runtime.handlers, POSTS.name: self.done}
        self.worker = Worker(self.runtime)
        # As the daemon does. It also freezes the stand-in's graph, which in production lives in
        # MongoDB, not in the worker's heap.
        tune_gc()
        self._task = asyncio.create_task(self.worker.run())
        # Both streams open from "now": wait until they have, so no write lands before. Polled: the
        # worker exposes no event for it.
        worker = self.worker
        while len(worker.pipelines) < len(feeds) or any(p.stats.idle_polls == 0 for p in worker.pipelines):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def _record_sizes(self, publisher: Any) -> None:
        send = publisher.send
        sizes = self.sizes

        async def recorded(message: OutgoingMessage) -> asyncio.Future[None]:
            sizes.append(len(message.body))
            return await send(message)  # type: ignore[no-any-return]

        publisher.send = recorded

    def add_user(self, uid: str, followers: list[str]) -> None:
        self.db.insert("profiles", profile(uid))
        self.follows.set_followers(uid, followers)

    def post(self, author: str, at: float | None = None) -> str:
        post_id = f"p{self._next_post:08d}"
        self._next_post += 1
        self.offered[post_id] = time.monotonic() if at is None else at
        self.db.insert("posts", {"_id": post_id, "author_id": author, "text": f"post {post_id} by {author}"})
        return post_id

    def edit(self, uid: str) -> int:
        version = self.versions.get(uid, 1) + 1
        self.versions[uid] = version
        self.edited[(uid, version)] = time.monotonic()
        fields = profile(uid, version)
        del fields["_id"]
        self.db.update("profiles", uid, fields)
        return version

    def handled(self, stream: str) -> int:
        assert self.worker is not None
        return sum(
            p.stats.handled + p.stats.dead_lettered for p in self.worker.pipelines if p.stream == stream
        )

    @property
    def confirmed(self) -> int:
        assert self.runtime is not None
        return self.runtime.publisher.stats.confirmed

    @property
    def retries(self) -> int:
        """Events retried: a dependency failed them (none should, on a healthy machine)."""
        assert self.worker is not None
        return sum(p.stats.retries for p in self.worker.pipelines)

    @property
    def dead_lettered(self) -> int:
        assert self.worker is not None
        return sum(p.stats.dead_lettered for p in self.worker.pipelines)

    async def wait_handled(self, posts: int, edits: int, limit: float = 600.0) -> None:
        """Until the worker has finished ``posts`` post events and ``edits`` profile events."""
        deadline = time.monotonic() + limit
        while self.handled(POSTS.name) < posts or self.handled(PROFILES.name) < edits:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker finished {self.handled(POSTS.name)}/{posts} posts and "
                    f"{self.handled(PROFILES.name)}/{edits} edits in {limit:.0f}s"
                )
            assert self._task is not None
            if self._task.done():
                self._task.result()  # the worker died: surface why
                raise RuntimeError("the worker stopped")
            await asyncio.sleep(0.002)

    def latencies(self, since: int = 0) -> list[float]:
        """Seconds from write to last confirm of each post written since the ``since``-th."""
        assert self.done is not None
        done = self.done.done
        return [done[p] - at for p, at in list(self.offered.items())[since:] if p in done]

    async def stop(self) -> None:
        if self.worker is not None and self._task is not None:
            self.worker.stop.set()
            await self._task
        if self.queue is not None:
            await self.queue.delete(self.settings.rabbitmq.exchange)
        if self.tailer:
            q = self.settings.rabbitmq
            await delete_job_topology(
                q.url.get_secret_value(), self.settings.fanout, q.confirm_timeout_seconds
            )
        if self.redis is not None:
            keys = [k async for k in self.redis.scan_iter(match=f"{self.settings.redis.key_prefix}*")]
            for start in range(0, len(keys), 1000):
                await self.redis.delete(*keys[start : start + 1000])
            await self.redis.aclose()
