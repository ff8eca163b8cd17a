"""Bursts against Redis: wider than the connection pool, and storms of profile edits.

Found by the profile-storm benchmark: with redis-py's default pool (100 connections, then
MaxConnectionsError), 1,000 concurrent profile edits read as a Redis outage and were retried.
Edits now cascade per micro-batch, and a burst wider than the pool waits for a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr

from enrichment.breaker import CircuitBreaker
from enrichment.invalidation import RedisInvalidationBus
from enrichment.redis_layer import RedisLayer
from enrichment.snapshot import AuthorSnapshot
from handlers.events import ChangeEvent
from tests.conftest import REDIS_URL
from tests.harness import Collector, World, handle_events, settings, start, wait_for
from worker.wiring import redis_client


async def test_lookups_beyond_the_pool_size_wait_for_a_connection_instead_of_failing(
    key_prefix: str, redis: aioredis.Redis
) -> None:
    # Given the worker's Redis client with a pool of 2 connections, behind the L2 layer
    base = settings(key_prefix)
    cfg = base.model_copy(
        update={"redis": base.redis.model_copy(update={"url": SecretStr(REDIS_URL), "max_connections": 2})}
    )
    client = redis_client(cfg)
    layer = RedisLayer(client, key_prefix, 60, 0.0, 30, CircuitBreaker(3, 5.0))
    await redis.set(f"{key_prefix}snap:u07", AuthorSnapshot("u07", "u07", "U", None, 1).to_json())
    try:
        # When 60 lookups hit Redis at once (many micro-batches in flight)
        results = await asyncio.gather(*(layer.get_many([f"u{i:02d}"]) for i in range(60)))
    finally:
        await client.aclose()
    # Then every one was answered: none failed, the breaker stayed closed
    assert layer.errors == 0
    assert layer.available
    assert sum(len(r) for r in results) == 1
    assert results[7] == {"u07": AuthorSnapshot("u07", "u07", "U", None, 1)}


async def test_a_storm_of_profile_edits_cascades_every_edit_on_its_first_attempt(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector
) -> None:
    # Given a worker whose Redis pool holds only 2 connections, and 60 users
    base = settings(key_prefix, exchange)
    cfg = base.model_copy(
        update={"redis": base.redis.model_copy(update={"url": SecretStr(REDIS_URL), "max_connections": 2})}
    )
    client = redis_client(cfg)
    world = World()
    users = [f"u{i:02d}" for i in range(60)]
    for user in users:
        world.add_user(user)
    runtime = world.runtime(cfg, client)
    worker, task = await start(runtime)
    try:
        # When all 60 edit their profiles at once (one micro-batch, handled concurrently)
        for user in users:
            world.edit_user(user, display_name="new")
        await wait_for(lambda: runtime.profiles.stats.changes == 60, what="60 cascades")
    finally:
        worker.stop.set()
        await task
        await client.aclose()
    # Then no edit was retried or dead-lettered, and Redis never looked down
    stats = next(p.stats for p in worker.pipelines if p.stream == "profiles")
    assert (stats.retries, stats.dead_lettered) == (0, 0)
    assert runtime.cache.l2 is not None and runtime.cache.l2.errors == 0
    assert runtime.cache.stats.repairs_replayed == 0
    # And every replica was told, and every new snapshot is in Redis
    assert runtime.bus.published == 60  # type: ignore[attr-defined]
    await wait_for(lambda: len(collector.of("profile.updated")) == 60, what="60 profile.updated")
    for user in users:
        assert await redis.get(f"{key_prefix}snap:{user}") is not None


async def test_a_batch_of_profile_changes_costs_one_l2_write_and_one_invalidation_round_trip(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector
) -> None:
    # Given 50 users who each edited their profile, read as one micro-batch of change events
    world = World()
    users = [f"u{i:02d}" for i in range(50)]
    for user in users:
        world.add_user(user)
    start_at = len(world.db.log())
    for user in users:
        world.edit_user(user, display_name="new")
    events = [ChangeEvent.from_raw("profiles", raw) for _, raw in world.db.log()[start_at:]]
    # with lookup documents, as updateLookup gives them
    for event, user in zip(events, users, strict=True):
        event.raw["fullDocument"] = dict(world.db.collection("profiles")[user])
    events = [ChangeEvent.from_raw("profiles", e.raw) for e in events]
    # and a second replica listening for invalidations
    peer = RedisInvalidationBus(redis, f"{key_prefix}invalidations")
    heard: list[tuple[str, int]] = []
    listener = asyncio.create_task(peer.run(lambda u, v: heard.append((u, v)), lambda: None))
    await wait_for(lambda: peer.gaps == 1, what="the peer to subscribe")
    runtime = world.runtime(settings(key_prefix, exchange), redis)
    commands: Counter[str] = Counter()
    pipelines: list[int] = []
    send = redis.execute_command
    pipeline = redis.pipeline

    async def counted(*args: Any, **options: Any) -> Any:
        commands[str(args[0]).upper()] += 1
        return await send(*args, **options)

    def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        run = pipe.execute

        async def execute(*a: Any, **k: Any) -> Any:
            pipelines.append(len(pipe.command_stack))
            return await run(*a, **k)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    await runtime.publisher.connect()
    # (the write script loaded into Redis already, as after a worker's first write)
    assert runtime.cache.l2 is not None
    await runtime.cache.l2.put_many([("warm-up", AuthorSnapshot("warm-up", "w", "w", None, 1))])
    redis.execute_command = counted  # type: ignore[method-assign]
    redis.pipeline = counted_pipeline  # type: ignore[method-assign]
    try:
        # When the batch is handled
        results = await handle_events(runtime.profiles, events)
    finally:
        del redis.execute_command, redis.pipeline
        await runtime.publisher.close()
    # Then it took one version-guarded L2 write for all 50, and one pipelined round of 50 invalidations
    assert results == [None] * 50
    assert commands["EVALSHA"] + commands["EVAL"] == 1, commands
    assert pipelines == [50]
    assert runtime.profiles.stats.l2_replaced == 50
    # And the other replica heard every one of them
    await wait_for(lambda: len(heard) == 50, what="50 invalidations heard")
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    assert sorted(heard) == [(u, 2) for u in users]


async def test_a_key_of_another_type_is_overwritten_without_failing_the_batch(
    key_prefix: str, redis: aioredis.Redis
) -> None:
    # Given an L2 key that something else wrote as a hash, among keys of a batch of changes
    layer = RedisLayer(redis, key_prefix, 60, 0.0, 30, CircuitBreaker(3, 5.0))
    await redis.hset(f"{key_prefix}snap:odd", "x", "1")  # type: ignore[misc]
    batch = [AuthorSnapshot(u, u, u.upper(), None, 2) for u in ("a", "odd", "b")]
    # When the batch is written
    written = await layer.put_many([(s.user_id, s) for s in batch])
    # Then every snapshot was written, the odd key replaced by a snapshot, and Redis never looked down
    assert written == 3
    assert layer.errors == 0
    assert await layer.get_many(["a", "odd", "b"]) == {s.user_id: s for s in batch}


async def test_invalidations_redis_refuses_are_reported_not_told() -> None:
    # Given a bus whose Redis does not answer
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    bus = RedisInvalidationBus(dead, "nobody-listens")
    try:
        # When a batch of invalidations is published
        told = await bus.publish_many([("a", 2), ("b", 3)])
    finally:
        await dead.aclose()
    # Then the caller learns the replicas were not told (and retries the events)
    assert told is False
    assert bus.published == 0
