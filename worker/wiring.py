"""Wiring: the one place that builds clients and adapters and decides which implementation is used,
for ``run``, ``check``, ``demo`` and the checkpoint commands. What it opens goes on an
``AsyncExitStack`` and is closed in reverse order, each step bounded."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from enrichment.breaker import CircuitBreaker
from enrichment.cache import LayeredCache
from enrichment.errors import ServiceUnavailable
from enrichment.invalidation import RedisInvalidationBus
from enrichment.memory import MemoryLayer
from enrichment.ports import InvalidationBus, ProfileSource
from enrichment.redis_layer import RedisLayer
from handlers.chunks import ChunkCounts
from handlers.emitter import JobEmitter
from handlers.limits import AuthorRateLimiter
from handlers.ports import DeadLetters, FollowerGraph, OutgoingMessage, PostStore
from handlers.posts import PostCreatedHandler, PostStats
from handlers.profiles import ProfileChangedHandler
from worker import uris
from worker.failures import cause
from worker.fanout.runner import FanoutRunner
from worker.memory.bus import LocalInvalidationBus
from worker.memory.jobs import InlineJobQueue
from worker.messaging.job_lanes import JobLanesPublisher
from worker.messaging.jobs import BulkShards, ensure_job_topology
from worker.messaging.publisher import RabbitPublisher
from worker.messaging.topology import ensure_topology
from worker.mongo.feed import MongoChangeFeed
from worker.mongo.stores import (
    MongoCheckpointStore,
    MongoDeadLetters,
    MongoFollowerGraph,
    MongoLeaseStore,
    MongoPostStore,
    MongoProfileSource,
)
from worker.ports import ChangeFeed, CheckpointStore, EventHandler, LeaseStore, ManagedPublisher
from worker.settings import Role, Settings
from worker.shutdown import bounded
from worker.streams import POSTS, PROFILES, STREAMS, HandlerDeps


@dataclass
class Runtime:
    """Everything a Worker runs on, built once and passed in."""

    settings: Settings
    feeds: Mapping[str, ChangeFeed]
    handlers: Mapping[str, EventHandler]  # by stream name, built from the table's rows
    cache: LayeredCache
    bus: InvalidationBus
    publisher: ManagedPublisher
    checkpoints: CheckpointStore
    dead_letters: DeadLetters
    leases: LeaseStore | None = None  # None: leader election off, this worker always tails
    # Fan-out jobs: where the tailer publishes them (RabbitMQ, or the inline in-memory stand-in), and
    # this process's fan-out workers consuming them (None: in-memory jobs, or role "tailer").
    jobs: ManagedPublisher | None = None
    fanout: FanoutRunner | None = None
    role: Role = "all"
    # Readiness probes by dependency name, for /readyz and `fanout-worker check`.
    checks: dict[str, Callable[[], Awaitable[bool]]] = field(default_factory=dict)
    # Every client the wiring opened, closed in reverse order of opening, each step bounded.
    resources: AsyncExitStack = field(default_factory=AsyncExitStack)
    labels: dict[str, str] = field(default_factory=dict)  # what each dependency really is

    @property
    def posts(self) -> PostCreatedHandler:
        """The posts stream's handler, whose counters and job emitter observability reads."""
        handler = self.handlers[POSTS.name]
        assert isinstance(handler, PostCreatedHandler)
        return handler

    @property
    def profiles(self) -> ProfileChangedHandler:
        handler = self.handlers[PROFILES.name]
        assert isinstance(handler, ProfileChangedHandler)
        return handler


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
    jobs: ManagedPublisher | None = None,
) -> Runtime:
    """Build the cache and handlers over whichever adapters the caller chose. Without a job
    publisher, jobs run inline in this process (worker/memory/jobs.py, the in-memory stand-in)."""
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
    post_stats = PostStats()
    if jobs is None:
        jobs = InlineJobQueue(stores.graph, publisher, p.chunk_size, post_stats)
    f = settings.fanout
    limiter = (
        AuthorRateLimiter(f.author_posts_per_second, f.author_burst)
        if f.author_posts_per_second > 0
        else None
    )
    emitter = JobEmitter(stores.graph, jobs, f.range_size, limiter)
    deps = HandlerDeps(settings, cache, bus, stores.posts, publisher, emitter, post_stats)
    return Runtime(
        settings=settings,
        feeds=feeds,
        handlers={spec.name: spec.handler(deps) for spec in STREAMS},
        cache=cache,
        bus=bus,
        publisher=publisher,
        checkpoints=stores.checkpoints,
        dead_letters=stores.dead_letters,
        leases=stores.leases,
        jobs=jobs,
        role=f.role,
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
    """Messages to consumers (chunks, profile.updated) on ``rabbitmq.exchange``."""
    q = settings.rabbitmq
    return RabbitPublisher(
        q.url.get_secret_value(),
        q.exchange,
        q.publish_window,
        q.confirm_timeout_seconds,
        q.reconnect_max_seconds,
    )


def job_publisher(settings: Settings) -> JobLanesPublisher:
    """Fan-out jobs on ``fanout.exchange``: an unroutable job fails its post instead of vanishing.
    Bulk jobs have a connection and window of their own (worker/messaging/job_lanes.py), each big
    post's routed to one bulk shard."""
    q = settings.rabbitmq

    def publisher(route: Callable[[OutgoingMessage], str] | None) -> RabbitPublisher:
        return RabbitPublisher(
            q.url.get_secret_value(),
            settings.fanout.exchange,
            q.publish_window,
            q.confirm_timeout_seconds,
            q.reconnect_max_seconds,
            unroutable_fails=True,
            stamped=True,
            route=route,
        )

    return JobLanesPublisher(publisher(None), publisher(BulkShards(settings.fanout.bulk_shards).routing_key))


def fanout_runner(
    settings: Settings, graph: FollowerGraph, chunks: ManagedPublisher, counts: ChunkCounts
) -> FanoutRunner:
    """This process's fan-out workers: a consumer per lane on one connection."""
    q = settings.rabbitmq
    return FanoutRunner(
        q.url.get_secret_value(),
        settings.fanout,
        graph,
        chunks,
        settings.pipeline.chunk_size,
        q.confirm_timeout_seconds,
        q.reconnect_max_seconds,
        counts=counts,
    )


CLOSE_STEP_SECONDS = 1.0  # closing one client at shutdown: a dead peer does not answer


def close_later(stack: AsyncExitStack, what: str, close: Callable[[], Awaitable[Any]]) -> None:
    """Register ``close`` on ``stack``, bounded, so one dead peer cannot hold the others' closing."""

    async def bounded_close() -> None:
        await bounded(f"closing {what}", close(), CLOSE_STEP_SECONDS)

    stack.push_async_callback(bounded_close)


def mongo_client(settings: Settings) -> AsyncMongoClient[dict[str, Any]]:
    """The one place a MongoDB client is built (run, check, checkpoint commands)."""
    m = settings.mongo
    return AsyncMongoClient(
        m.uri.get_secret_value(),
        serverSelectionTimeoutMS=m.server_selection_timeout_ms,
        appname="fanout-worker",
        tz_aware=True,
    )


def open_mongo(settings: Settings, stack: AsyncExitStack) -> AsyncMongoClient[dict[str, Any]]:
    client = mongo_client(settings)
    close_later(stack, "MongoDB", client.close)
    return client


async def reach_mongo(settings: Settings, stack: AsyncExitStack) -> AsyncMongoClient[dict[str, Any]]:
    """A client closed by ``stack``, once a ping answers. Raises ServiceUnavailable naming
    host:port and the cause when MongoDB is unreachable."""
    m = settings.mongo
    mongo = open_mongo(settings, stack)
    try:
        await mongo.admin.command("ping")
    except PyMongoError as exc:
        where = uris.validate_mongo(m.uri.get_secret_value()).endpoints()
        raise ServiceUnavailable(f"MongoDB is unreachable: {where}: {cause(exc)}") from None
    return mongo


def open_redis(settings: Settings, stack: AsyncExitStack) -> aioredis.Redis:
    client = redis_client(settings)
    close_later(stack, "Redis", client.aclose)
    return client


def checkpoint_stores(
    settings: Settings, mongo: AsyncMongoClient[dict[str, Any]]
) -> tuple[MongoCheckpointStore, MongoLeaseStore]:
    """The stores the checkpoint commands need."""
    m = settings.mongo
    db = mongo[m.database]
    return MongoCheckpointStore(db[m.checkpoints], db[m.gaps]), MongoLeaseStore(
        db[m.leases], settings.leader.name
    )


async def build_runtime(settings: Settings) -> Runtime:
    """Production wiring: PyMongo async, Redis and RabbitMQ. Fails fast if one is unreachable, having
    closed whatever it opened."""
    async with AsyncExitStack() as stack:
        runtime = await _build(settings, stack)
        runtime.resources = stack.pop_all()  # from here on the daemon closes them
        return runtime


def warn_unbound_messages(settings: Settings) -> None:
    """Say at start which of the messages this worker publishes no declared queue takes: the broker
    drops them (each is then logged as unroutable), so consumers would never see them."""
    if not settings.topology.declare:
        return  # the operator's own queues: not known here
    kinds = ["post.created", "post.deleted", "profile.updated"]
    if settings.post_lifecycle.edits:
        kinds.insert(1, "post.updated")
    missing = settings.topology.unbound(kinds)
    if missing:
        logger.warning(
            "no queue in [topology] is bound to {}: the broker drops those messages; bind a queue "
            "(docs/consumers.md)",
            ", ".join(missing),
        )


async def _build(settings: Settings, stack: AsyncExitStack) -> Runtime:
    m = settings.mongo
    mongo = await reach_mongo(settings, stack)
    db = mongo[m.database]
    feeds: dict[str, ChangeFeed] = {}
    for spec in STREAMS:
        w = spec.watch(settings)
        feed = MongoChangeFeed(
            db[spec.collection(m)],
            spec.name,
            w.ops,
            w.update_lookup,
            m.max_await_time_ms,
            m.change_batch_size,
            w.fields,
            m.large_events,
            w.before_change,
            w.match,
        )
        if settings.fanout.role != "fanout":  # pre-images "required" on a collection without them
            await feed.check_pre_images()
        feeds[spec.name] = feed
    checkpoints, leases = checkpoint_stores(settings, mongo)
    stores = Stores(
        source=MongoProfileSource(db[m.profiles]),
        posts=MongoPostStore(db[m.posts]),
        graph=MongoFollowerGraph(db[m.follows], m.follower_batch_size),
        checkpoints=checkpoints,
        dead_letters=MongoDeadLetters(db[m.dead_letters]),
        leases=leases if settings.leader.enabled else None,
    )
    role = settings.fanout.role
    tails = role != "fanout"
    redis: aioredis.Redis | None = None
    if tails:  # a fan-out worker reads followers and publishes chunks: no cache, no Redis
        redis = open_redis(settings, stack)
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            where = uris.validate_redis(settings.redis.url.get_secret_value()).endpoints()
            raise ServiceUnavailable(f"Redis is unreachable: {where}: {cause(exc)}") from None
    publisher = rabbit_publisher(settings)
    jobs = job_publisher(settings)
    # Closed by the daemon first (it drains confirms); here only if start-up fails after this.
    start_failed = AsyncExitStack()
    start_failed.push_async_callback(publisher.close)
    start_failed.push_async_callback(jobs.close)
    async with start_failed:
        await publisher.connect()
        url, timeout = settings.rabbitmq.url.get_secret_value(), settings.rabbitmq.confirm_timeout_seconds
        # Consumer queues first, so fan-out messages always have somewhere to go; then the job
        # queues, so jobs do too.
        await ensure_topology(url, settings.rabbitmq.exchange, settings.topology, timeout)
        warn_unbound_messages(settings)
        await ensure_job_topology(url, settings.fanout, timeout)
        if tails:
            await jobs.connect()
        start_failed.pop_all()
    runtime = assemble(settings, feeds, stores, publisher, redis, jobs=jobs)
    if role != "tailer":
        runtime.fanout = fanout_runner(settings, stores.graph, publisher, runtime.posts.stats)

    async def mongo_ok() -> bool:
        return bool((await mongo.admin.command("ping")).get("ok"))

    # Readiness reports every dependency; liveness (/healthz) alone decides restarts, so a Redis
    # outage, which the worker survives on L1 and the source, never gets it killed.
    runtime.checks = {"mongodb": mongo_ok, "rabbitmq": publisher.check}
    if tails:  # posts wait on their jobs' confirms
        runtime.checks["jobs"] = jobs.check
    runtime.labels = {"mongodb": "PyMongo", "rabbitmq": "RabbitMQ", "jobs": "RabbitMQ job queues"}
    if redis is not None:
        client = redis

        async def redis_ok() -> bool:
            return bool(await client.ping())

        runtime.checks["redis"] = redis_ok
        runtime.labels["redis"] = "Redis"
    runner = runtime.fanout
    if runner is not None:

        async def fanout_ok() -> bool:
            return runner.connected

        runtime.checks["fanout"] = fanout_ok
    return runtime
