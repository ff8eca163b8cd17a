"""Batching: one L3 query and one Redis MGET per micro-batch at most, whatever its size."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.harness import Collector, World, settings, start, wait_for


async def _run_pass(world: World, cfg, redis, start_index: int, collector: Collector) -> tuple:
    runtime = world.runtime(cfg, redis)
    worker, task = await start(runtime)
    posts_pipeline = next(p for p in worker.pipelines if p.stream == "posts")
    for i in range(start_index, start_index + 500):
        world.post(f"p{i:05d}", f"a{i % 50:02d}")
    await wait_for(lambda: posts_pipeline.stats.handled >= 500, what="500 posts handled")
    worker.stop.set()
    await task
    return runtime, posts_pipeline.stats.batches


async def test_500_posts_by_50_authors_cost_one_query_and_one_mget_per_batch(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector
) -> None:
    # Given 50 authors, each followed by two fans
    world = World()
    for a in range(50):
        world.add_user(f"a{a:02d}")
        world.graph.set_followers(f"a{a:02d}", [f"fan{a}x", f"fan{a}y"])
    cfg = settings(key_prefix, exchange, batch_max_events=100, batch_max_wait_ms=50)

    # When 500 posts by those authors go through a cold worker
    runtime, batches = await _run_pass(world, cfg, redis, 0, collector)

    # Then L3 and Redis were each asked at most once per micro-batch, and batching did happen
    assert 5 <= batches < 500
    assert world.source.queries <= batches
    assert runtime.cache.l2 is not None and runtime.cache.l2.mget_calls <= batches
    assert world.source.ids_requested == 50  # each author fetched from the source exactly once
    assert runtime.cache.stats.l3_hits == 50

    # When a second pass covers the same authors on the same (warm) worker process state
    queries_before = world.source.queries
    runtime2, _ = await _run_pass(world, cfg, redis, 500, collector)

    # Then the source is not queried at all: a fresh L1 is filled from Redis
    assert world.source.queries == queries_before
    assert runtime2.cache.stats.l2_hits == 50
    await wait_for(lambda: len(collector.of("post.created")) == 1000, what="1000 messages")


async def test_second_pass_in_one_worker_is_served_by_l1(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector
) -> None:
    world = World()
    for a in range(50):
        world.add_user(f"a{a:02d}")
        world.graph.set_followers(f"a{a:02d}", [f"fan{a}"])
    cfg = settings(key_prefix, exchange, batch_max_events=100, batch_max_wait_ms=50)
    runtime = world.runtime(cfg, redis)
    worker, task = await start(runtime)
    posts_pipeline = next(p for p in worker.pipelines if p.stream == "posts")
    for i in range(500):
        world.post(f"p{i:05d}", f"a{i % 50:02d}")
    await wait_for(lambda: posts_pipeline.stats.handled >= 500, what="first pass")
    queries, mgets = world.source.queries, runtime.cache.l2.mget_calls  # type: ignore[union-attr]

    for i in range(500, 1000):
        world.post(f"p{i:05d}", f"a{i % 50:02d}")
    await wait_for(lambda: posts_pipeline.stats.handled >= 1000, what="second pass")
    worker.stop.set()
    await task

    assert world.source.queries == queries
    assert runtime.cache.l2.mget_calls == mgets  # type: ignore[union-attr]
    assert runtime.cache.stats.l1_hits >= 50
