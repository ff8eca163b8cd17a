"""Test harness: an in-memory MongoDB stand-in world wired to real Redis and RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
import redis.asyncio as aioredis

from enrichment.cache import LayeredCache
from enrichment.snapshot import AuthorSnapshot
from handlers.contract import POST_CREATED, RangeChunkEncoder, encode_head
from handlers.emitter import JobEmitter
from handlers.events import ChangeEvent, NewPost
from handlers.jobs import FanoutJob, FollowerRange
from handlers.ports import FollowerGraph, OutgoingMessage, PostStore, Publisher
from handlers.posts import PostCreatedHandler, PostStats
from worker.daemon import Worker
from worker.memory.db import MemoryDatabase
from worker.memory.feed import memory_feeds
from worker.memory.jobs import InlineJobQueue
from worker.memory.stores import (
    MemoryCheckpointStore,
    MemoryDeadLetters,
    MemoryFollowerGraph,
    MemoryPostStore,
    MemoryProfileSource,
)
from worker.messaging.publisher import RabbitPublisher
from worker.ports import ChangeFeed, EventHandler
from worker.settings import Settings
from worker.wiring import Runtime, Stores, assemble

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def settings(key_prefix: str = "t:", exchange: str = "test.fanout", **pipeline: Any) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "redis": base.redis.model_copy(update={"key_prefix": key_prefix}),
            "rabbitmq": base.rabbitmq.model_copy(update={"exchange": exchange, "publish_window": 64}),
            "pipeline": base.pipeline.model_copy(
                update={
                    "checkpoint_interval_seconds": 0.05,
                    "shutdown_deadline_seconds": 5,
                    # The world's setup writes right before start: a first start must not replay it.
                    "first_start_lookback_seconds": 0,
                    **pipeline,
                }
            ),
        }
    )


@dataclass
class World:
    """The in-memory MongoDB stand-in: data, change log, and the stores over them."""

    db: MemoryDatabase = field(default_factory=MemoryDatabase)
    graph: MemoryFollowerGraph = field(default_factory=MemoryFollowerGraph)
    checkpoints: MemoryCheckpointStore = field(default_factory=MemoryCheckpointStore)
    dead: MemoryDeadLetters = field(default_factory=MemoryDeadLetters)

    def __post_init__(self) -> None:
        self.source = MemoryProfileSource(self.db)
        self.posts = MemoryPostStore(self.db)

    def add_user(self, user_id: str, version: int = 1, **fields: Any) -> None:
        doc = {
            "_id": user_id,
            "username": user_id,
            "display_name": f"User {user_id}",
            "avatar_url": f"https://cdn.example/{user_id}/{version}.png",
            "version": version,
            **fields,
        }
        self.db.insert("profiles", doc)

    def edit_user(self, user_id: str, **fields: Any) -> int:
        version = int(self.db.collection("profiles")[user_id]["version"]) + 1
        self.db.update("profiles", user_id, {**fields, "version": version})
        return version

    def post(self, post_id: str, author_id: str, text: str = "hello") -> None:
        self.db.insert("posts", {"_id": post_id, "author_id": author_id, "text": text})

    def feeds(self) -> dict[str, ChangeFeed]:
        return memory_feeds(self.db, 0.05)

    def runtime(self, cfg: Settings, redis: aioredis.Redis | None, publisher: Any = None) -> Runtime:
        stores = Stores(self.source, self.posts, self.graph, self.checkpoints, self.dead)
        pub = publisher or RabbitPublisher(
            AMQP_URL, cfg.rabbitmq.exchange, cfg.rabbitmq.publish_window, 5.0, 1.0
        )
        return assemble(cfg, self.feeds(), stores, pub, redis)


async def start(runtime: Runtime) -> tuple[Worker, asyncio.Task[None]]:
    await runtime.publisher.connect()
    worker = Worker(runtime)
    task = asyncio.create_task(worker.run())
    # Both streams open "from now" when there is no checkpoint: wait until they have.
    await wait_for(
        lambda: (
            bool(worker.pipelines)
            and all(p.stats.idle_polls > 0 or p.stats.read > 0 for p in worker.pipelines)
        ),
        what="both streams to open",
    )
    return worker, task


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Received:
    routing_key: str
    message_id: str
    correlation_id: str
    content_type: str | None
    persistent: bool
    body: dict[str, Any]


class Collector:
    """A test consumer: an exclusive queue bound to every routing key of the exchange."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, exchange: str) -> None:
        self._connection = connection
        self._exchange = exchange
        self.messages: list[Received] = []

    @classmethod
    async def start(cls, url: str, exchange: str) -> Collector:
        connection = await aio_pika.connect(url, timeout=5)
        channel = await connection.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(ex, "#")
        collector = cls(connection, exchange)
        await queue.consume(collector._on_message, no_ack=True)
        return collector

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.messages.append(
            Received(
                message.routing_key or "",
                message.message_id or "",
                message.correlation_id or "",
                message.content_type,
                message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT,
                orjson.loads(message.body),
            )
        )

    def of(self, routing_key: str) -> list[Received]:
        return [m for m in self.messages if m.routing_key == routing_key]

    def recipients_by_post(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for m in self.of("post.created"):
            out.setdefault(m.body["post"]["id"], set()).update(m.body["recipients"])
        return out

    async def close(self) -> None:
        """Disconnect and delete the test's exchange, so runs leave nothing on the broker."""
        channel = await self._connection.channel()
        await channel.exchange_delete(self._exchange)
        await self._connection.close()


async def handle_events(handler: EventHandler, events: Sequence[ChangeEvent]) -> list[BaseException | None]:
    """Run a handler's reporting ``process`` once and return each event's result in input order."""
    results: list[BaseException | None] = [None] * len(events)
    await handler.process(events, results.__setitem__)
    return results


def post_handler(
    cache: LayeredCache,
    posts: PostStore,
    graph: FollowerGraph,
    publisher: Publisher,
    chunk_size: int,
    max_text_bytes: int = 256 * 1024,
    range_size: int = 10_000,
) -> PostCreatedHandler:
    """A post handler whose jobs run inline (the in-memory job stand-in), publishing chunks to
    ``publisher``: the tailer and fan-out code paths in one call, as ``assemble`` wires them."""
    stats = PostStats()
    jobs = InlineJobQueue(graph, publisher, chunk_size, stats)
    return PostCreatedHandler(cache, posts, JobEmitter(graph, jobs, range_size), max_text_bytes, stats)


def chunk_of(
    post: NewPost,
    author: AuthorSnapshot | None,
    recipients: list[str],
    index: int,
    last: bool,
    range_index: int = 0,
    range_count: int = 1,
) -> OutgoingMessage:
    """The post.created chunk a fan-out worker makes of ``post``'s range ``range_index``."""
    head = encode_head(post.id_str, post.author_id, post.created_at, post.text, author)
    job = FanoutJob(
        POST_CREATED,
        post.id_str,
        post.author_id,
        head,
        FollowerRange(),
        range_index,
        range_count,
        "ordinary" if range_count == 1 else "bulk",
    )
    return RangeChunkEncoder(job.post_id, job.head, job.range_index, job.range_count).message(
        recipients, index, last
    )
