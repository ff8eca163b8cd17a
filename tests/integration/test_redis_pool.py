"""A burst wider than the Redis connection pool waits for connections instead of failing.

Found by the profile-storm benchmark: with redis-py's default pool (100 connections, then
MaxConnectionsError), 1,000 concurrent profile edits read as a Redis outage and were retried.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.conftest import REDIS_URL
from tests.harness import Collector, World, settings, start, wait_for
from worker.app import redis_client


async def test_profile_edits_beyond_the_pool_size_all_cascade_on_their_first_attempt(
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
