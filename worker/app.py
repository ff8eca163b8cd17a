"""Wiring: the one place that builds clients and adapters and decides which implementation is used."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from enrichment.breaker import CircuitBreaker
from enrichment.cache import LayeredCache
from enrichment.errors import ConfigError, ServiceUnavailable
from enrichment.invalidation import InvalidationBus, LocalInvalidationBus, RedisInvalidationBus
from enrichment.memory import MemoryLayer
from enrichment.redis_layer import RedisLayer
from enrichment.source import ProfileSource
from handlers.events import POST_EVENT_FIELDS, PROFILE_EVENT_FIELDS
from handlers.ports import DeadLetters, FollowerGraph, PostStore, Publisher
from handlers.posts import PostCreatedHandler
from handlers.profiles import ProfileChangedHandler
from worker import uris
from worker.adapters.mongo_feed import MongoChangeFeed
from worker.adapters.mongo_stores import (
    MongoCheckpointStore,
    MongoDeadLetters,
    MongoFollowerGraph,
    MongoLeaseStore,
    MongoPostStore,
    MongoProfileSource,
)
from worker.failures import cause
from worker.ports import ChangeFeed, CheckpointStore, LeaseStore
from worker.publisher import PublishStats, RabbitPublisher
from worker.settings import Settings
from worker.topology import ensure_topology

POSTS_STREAM = "posts"
PROFILES_STREAM = "profiles"
POST_OPS = ("insert",)
PROFILE_OPS = ("insert", "update", "replace", "delete")  # deletes tombstone the caches


class ManagedPublisher(Publisher, Protocol):
    stats: PublishStats

    @property
    def in_flight(self) -> int: ...

    async def connect(self) -> None: ...

    async def close(self, drain_seconds: float = 0.0) -> None: ...


Closer = Callable[[], Awaitable[Any]]


@dataclass
class Runtime:
    """Everything a Worker runs on, built once and passed in."""

    settings: Settings
    feeds: Mapping[str, ChangeFeed]
    posts: PostCreatedHandler
    profiles: ProfileChangedHandler
    cache: LayeredCache
    bus: InvalidationBus
    publisher: ManagedPublisher
    checkpoints: CheckpointStore
    dead_letters: DeadLetters
    leases: LeaseStore | None = None  # None: leader election off, this worker always tails
    # Readiness probes by dependency name, for /readyz and `fanout-worker check`.
    checks: dict[str, Callable[[], Awaitable[bool]]] = field(default_factory=dict)
    closers: list[Closer] = field(default_factory=list)  # closed in reverse order
    labels: dict[str, str] = field(default_factory=dict)  # what each dependency really is


@dataclass(frozen=True)
class Stores:
    source: ProfileSource
    posts: PostStore
    graph: FollowerGraph
    checkpoints: CheckpointStore
    dead_letters: DeadLetters
    leases: LeaseStore | None = None


def assemble(
    settings: Settings,
    feeds: Mapping[str, ChangeFeed],
    stores: Stores,
    publisher: ManagedPublisher,
    redis_client: aioredis.Redis | None,
    bus: InvalidationBus | None = None,
) -> Runtime:
    """Build the cache and handlers over whichever adapters the caller chose."""
    r, c, p = settings.redis, settings.cache, settings.pipeline
    l2 = None
    if redis_client is not None:
        l2 = RedisLayer(
            redis_client,
            r.key_prefix,
            r.ttl_seconds,
            r.ttl_jitter,
            r.negative_ttl_seconds,
            CircuitBreaker(r.breaker_threshold, r.breaker_cooldown_seconds),
            random.Random(),
        )
        bus = bus or RedisInvalidationBus(redis_client, f"{r.key_prefix}invalidations")
    l1 = MemoryLayer(c.l1_max_entries, c.l1_ttl_seconds, c.l1_negative_ttl_seconds)
    cache = LayeredCache(l1, l2, stores.source)
    bus = bus or LocalInvalidationBus()
    return Runtime(
        settings=settings,
        feeds=feeds,
        posts=PostCreatedHandler(
            cache, stores.posts, stores.graph, publisher, p.chunk_size, p.max_text_bytes
        ),
        profiles=ProfileChangedHandler(cache, bus, stores.posts, publisher, p.rewrite_concurrency),
        cache=cache,
        bus=bus,
        publisher=publisher,
        checkpoints=stores.checkpoints,
        dead_letters=stores.dead_letters,
        leases=stores.leases,
    )


def redis_client(settings: Settings) -> aioredis.Redis:
    r = settings.redis
    # A blocking pool: a burst of concurrent events (a profile storm) waits for a connection
    # instead of failing with MaxConnectionsError, which would read as an outage and open the breaker.
    pool = aioredis.BlockingConnectionPool.from_url(
        r.url.get_secret_value(),
        max_connections=r.max_connections,
        timeout=r.pool_wait_seconds,
        socket_timeout=r.socket_timeout_seconds,
        socket_connect_timeout=r.socket_timeout_seconds,
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)


def rabbit_publisher(settings: Settings) -> RabbitPublisher:
    q = settings.rabbitmq
    return RabbitPublisher(
        q.url.get_secret_value(),
        q.exchange,
        q.publish_window,
        q.confirm_timeout_seconds,
        q.reconnect_max_seconds,
    )


async def build_runtime(settings: Settings) -> Runtime:
    """Production wiring: PyMongo async, Redis and RabbitMQ. Fails fast if one is unreachable."""
    m = settings.mongo
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        m.uri.get_secret_value(),
        serverSelectionTimeoutMS=m.server_selection_timeout_ms,
        appname="fanout-worker",
        tz_aware=True,
    )
    closers: list[Closer] = [mongo.close]
    try:
        await mongo.admin.command("ping")
    except PyMongoError as exc:
        await mongo.close()
        where = uris.validate_mongo(m.uri.get_secret_value()).endpoints()
        raise ServiceUnavailable(f"MongoDB is unreachable: {where}: {cause(exc)}") from None
    db = mongo[m.database]
    feeds: dict[str, ChangeFeed] = {
        POSTS_STREAM: MongoChangeFeed(
            db[m.posts],
            POSTS_STREAM,
            POST_OPS,
            False,
            m.max_await_time_ms,
            m.change_batch_size,
            POST_EVENT_FIELDS,
            m.large_events,
        ),
        PROFILES_STREAM: MongoChangeFeed(
            db[m.profiles],
            PROFILES_STREAM,
            PROFILE_OPS,
            True,
            m.max_await_time_ms,
            m.change_batch_size,
            PROFILE_EVENT_FIELDS,
            m.large_events,
        ),
    }
    stores = Stores(
        source=MongoProfileSource(db[m.profiles]),
        posts=MongoPostStore(db[m.posts]),
        graph=MongoFollowerGraph(db[m.follows], m.follower_batch_size),
        checkpoints=MongoCheckpointStore(db[m.checkpoints], db[m.gaps]),
        dead_letters=MongoDeadLetters(db[m.dead_letters]),
        leases=MongoLeaseStore(db[m.leases], settings.leader.name) if settings.leader.enabled else None,
    )
    redis = redis_client(settings)
    closers.append(redis.aclose)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        for close in reversed(closers):
            await close()
        where = uris.validate_redis(settings.redis.url.get_secret_value()).endpoints()
        raise ServiceUnavailable(f"Redis is unreachable: {where}: {cause(exc)}") from None
    publisher = rabbit_publisher(settings)
    try:
        await publisher.connect()
        # Consumer queues first, so fan-out messages always have somewhere to go.
        await ensure_topology(
            settings.rabbitmq.url.get_secret_value(),
            settings.rabbitmq.exchange,
            settings.topology,
            settings.rabbitmq.confirm_timeout_seconds,
        )
    except (ServiceUnavailable, ConfigError):
        await publisher.close()
        for close in reversed(closers):
            await close()
        raise
    runtime = assemble(settings, feeds, stores, publisher, redis)
    runtime.closers = closers

    async def mongo_ok() -> bool:
        return bool((await mongo.admin.command("ping")).get("ok"))

    async def redis_ok() -> bool:
        return bool(await redis.ping())

    # Readiness reports every dependency; liveness (/healthz) alone decides restarts, so a Redis
    # outage, which the worker survives on L1 and the source, never gets it killed.
    runtime.checks = {"mongodb": mongo_ok, "redis": redis_ok, "rabbitmq": publisher.check}
    runtime.labels = {"mongodb": "PyMongo", "redis": "Redis", "rabbitmq": "RabbitMQ"}
    return runtime
