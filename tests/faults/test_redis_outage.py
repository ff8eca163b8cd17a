"""Redis faults: the worker keeps fanning out from the source, then L2 and the bus come back by themselves.

The worker's Redis client is the production one (``worker.wiring.redis_client``) pointed at a TcpProxy
the test controls; the test reads the real Redis (the same database) through the ``redis`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from enrichment.snapshot import decode_cached
from tests.faults.proxy import TcpProxy
from tests.harness import Collector, World, settings, start, wait_for
from worker.settings import Settings
from worker.wiring import redis_client

pytestmark = pytest.mark.timeout(120)

COOLDOWN = 1.0
SOCKET_TIMEOUT = 0.3
OUTAGE = 3.0  # at least; the outage also lasts until the profile cascade below has finished
REDIS_DB = 15  # the database the ``redis`` fixture reads and cleans up


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 6379)
    await p.start()
    yield p
    await p.close()


def fault_settings(key_prefix: str, exchange: str, port: int) -> Settings:
    base = settings(key_prefix, exchange)
    redis_cfg = base.redis.model_copy(
        update={
            "url": SecretStr(f"redis://127.0.0.1:{port}/{REDIS_DB}"),
            "socket_timeout_seconds": SOCKET_TIMEOUT,
            "breaker_cooldown_seconds": COOLDOWN,
        }
    )
    return base.model_copy(update={"redis": redis_cfg})


@pytest.fixture
async def proxied_redis(proxy: TcpProxy, key_prefix: str, exchange: str) -> AsyncIterator[aioredis.Redis]:
    """The worker's own Redis client (socket timeouts 0.3 s), connected through the proxy."""
    client = redis_client(fault_settings(key_prefix, exchange, proxy.port))
    yield client
    await client.aclose()


class Posts:
    """Writes posts, each by a fresh author unless told otherwise, so every batch misses L1."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.fresh = 0
        self.written: list[tuple[str, str, float]] = []  # (post id, author, monotonic time)

    def write(self, author: str | None = None) -> str:
        if author is None:
            author = f"n{self.fresh:04d}"
            self.fresh += 1
        post_id = f"p{len(self.written):05d}"
        self.world.post(post_id, author, text=f"post {post_id}")
        self.written.append((post_id, author, time.monotonic()))
        return post_id

    async def keep_writing(self, every: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.write()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


def build_world() -> World:
    world = World()
    for user in ("pre", "vg", *(f"n{i:04d}" for i in range(1000))):
        world.add_user(user)
        world.graph.set_followers(user, [f"f-{user}-a", f"f-{user}-b"])
    return world


def authors_of(collector: Collector, post_id: str) -> list[dict[str, Any] | None]:
    return [m.body["author"] for m in collector.of("post.created") if m.correlation_id == post_id]


def announced(collector: Collector, user_id: str, version: int) -> bool:
    return any(
        m.correlation_id == user_id and m.body["user"]["version"] >= version
        for m in collector.of("profile.updated")
    )


async def test_redis_outage_degrades_to_the_source_then_recovers_without_stale_snapshots(
    redis: aioredis.Redis,
    proxied_redis: aioredis.Redis,
    proxy: TcpProxy,
    key_prefix: str,
    exchange: str,
    collector: Collector,
) -> None:
    # Given a worker whose Redis client goes through the proxy, with a short breaker cool-down
    world = build_world()
    cfg = fault_settings(key_prefix, exchange, proxy.port)
    runtime = world.runtime(cfg, proxied_redis)
    cache, bus = runtime.cache, runtime.bus
    l2 = cache.l2
    assert l2 is not None
    worker, task = await start(runtime)
    pipeline = next(p for p in worker.pipelines if p.stream == "posts")
    posts = Posts(world)
    profiles = world.db.collection("profiles")
    await wait_for(lambda: getattr(bus, "gaps", 0) >= 1, what="the invalidation bus to subscribe")
    gaps_before = bus.gaps  # type: ignore[attr-defined]

    # and "pre" and "vg" in L1 and in Redis at version 1
    before = [posts.write("pre"), posts.write("vg")]
    await wait_for(lambda: all(authors_of(collector, p) for p in before), what="posts before")
    assert set(cache.l1.get_many(["pre", "vg"])[0]) == {"pre", "vg"}
    assert decode_cached(await redis.get(l2.key("vg"))).version == 1  # type: ignore[union-attr, arg-type]

    stop_writing = asyncio.Event()
    writer = asyncio.create_task(posts.keep_writing(0.05, stop_writing))
    try:
        # When Redis goes away (connections reset, new ones refused) while posts keep coming
        await proxy.cut()
        cut_at = time.monotonic()
        await wait_for(lambda: not l2.available, timeout=5, what="the breaker to open")
        opened_at, mget_opened, fills_opened = time.monotonic(), l2.mget_calls, cache.stats.source_queries
        handled_opened = pipeline.stats.handled
        # and "vg" edits their profile during the outage, and posts after the edit is seen
        vg_version = world.edit_user("vg", display_name="vg renamed in the outage")
        await wait_for(lambda: "vg" not in cache.l1.get_many(["vg"])[0], what="vg dropped from L1")
        during = posts.write("vg")
        # Then the profile cascade (posts rewritten, profile.updated) completes without Redis
        await wait_for(lambda: announced(collector, "vg", vg_version), timeout=15, what="profile.updated")
        await asyncio.sleep(max(0.0, cut_at + OUTAGE - time.monotonic()))
        outage_seconds = time.monotonic() - opened_at
        mget_grew = l2.mget_calls - mget_opened
        fills = cache.stats.source_queries - fills_opened
        handled_in_outage = pipeline.stats.handled - handled_opened
        still_open = not l2.available
        outage_posts = [p for p, _, _ in posts.written[2:]]

        # When Redis comes back
        await proxy.restore()
        restored_at = time.monotonic()
        # Then L2 closes its breaker and takes writes again, by itself
        await wait_for(lambda: l2.available, timeout=15, what="L2 to come back")
        posts.write()
        fresh_author = posts.written[-1][1]
        deadline = time.monotonic() + 5
        while await redis.get(l2.key(fresh_author)) is None:
            assert time.monotonic() < deadline, "a new author's snapshot never reached Redis after recovery"
            await asyncio.sleep(0.05)
        l2_back_after = time.monotonic() - restored_at
        # and the invalidation bus subscribes again, clearing L1 (it may have missed invalidations)
        await wait_for(lambda: bus.gaps > gaps_before, timeout=20, what="the bus to re-subscribe")  # type: ignore[attr-defined]
        bus_back_after = time.monotonic() - restored_at
        pre_in_l1 = "pre" in cache.l1.get_many(["pre"])[0]
        stop_writing.set()
        await writer
        # and "vg" posts again after the recovery
        last = posts.write("vg")
        await wait_for(
            lambda: all(authors_of(collector, p) for p, _, _ in posts.written),
            timeout=15,
            what="every post delivered",
        )
        vg_in_redis = await redis.get(l2.key("vg"))
    finally:
        stop_writing.set()
        await writer
        crashed = task.done()
        worker.stop.set()
        await task

    # Then the worker kept handling posts during the outage, enriched from the source
    assert not crashed
    assert handled_in_outage >= 20, handled_in_outage
    assert world.dead.items == []
    for post_id in outage_posts:
        author = world.db.collection("posts")[post_id]["author_id"]
        bodies = authors_of(collector, post_id)
        assert bodies, post_id
        for body in bodies:
            assert body is not None and body["user_id"] == author, post_id
    # and the breaker kept Redis out of the way: about one MGET per cool-down, not one per batch
    assert still_open
    assert mget_grew <= outage_seconds / COOLDOWN + 2, (mget_grew, outage_seconds)
    assert fills >= 3 * (outage_seconds / COOLDOWN + 2), (fills, mget_grew, outage_seconds)
    # and L2 and the bus came back by themselves
    assert l2_back_after < 15 and bus_back_after < 20
    assert not pre_in_l1, "L1 must be cleared when the bus re-subscribes"

    # and the profile edited during the outage is at its newest version everywhere after recovery
    assert profiles["vg"]["version"] == vg_version
    stale: list[str] = []
    # in the messages of the posts written after the edit (during the outage, and after recovery),
    for when, post_id in (("during the outage", during), ("after recovery", last)):
        versions = [b["version"] for b in authors_of(collector, post_id) if b is not None]
        if not versions or min(versions) < vg_version:
            stale.append(f"post {post_id} by vg written {when} was fanned out with author v{versions}")
    # in every stored post of "vg",
    for post_id, doc in world.db.collection("posts").items():
        stored = doc.get("author_snapshot", {}).get("version")
        if doc["author_id"] == "vg" and stored != vg_version:
            stale.append(f"post {post_id} by vg stores author v{stored}")
    # and in Redis (or not cached there at all): never the version the outage left behind
    if vg_in_redis is not None:
        snap = decode_cached(vg_in_redis)
        if snap is None or snap.version != vg_version:
            stale.append(f"Redis holds vg at v{snap.version if snap else None}")
    assert stale == [], f"vg edited to v{vg_version} during the Redis outage: " + "; ".join(stale)


async def test_a_dead_redis_costs_about_one_socket_timeout_per_call(
    redis: aioredis.Redis,  # not read: requested so its teardown deletes this test's keys
    proxied_redis: aioredis.Redis,
    proxy: TcpProxy,
    key_prefix: str,
    exchange: str,
    collector: Collector,
) -> None:
    """The breaker promises "one timeout per cool-down": the calls it lets through must fail fast."""
    # Given a running worker with its Redis client behind the proxy
    world = build_world()
    runtime = world.runtime(fault_settings(key_prefix, exchange, proxy.port), proxied_redis)
    l2 = runtime.cache.l2
    assert l2 is not None
    worker, task = await start(runtime)
    posts = Posts(world)
    first = posts.write("vg")
    await wait_for(lambda: authors_of(collector, first) != [], what="a first post")
    delivered_at: dict[str, float] = {}

    def seen() -> bool:
        now = time.monotonic()
        for m in collector.of("post.created"):
            delivered_at.setdefault(m.correlation_id, now)
        return all(p in delivered_at for p, _, _ in posts.written)

    stop_writing = asyncio.Event()
    writer = asyncio.create_task(posts.keep_writing(0.05, stop_writing))
    try:
        # When Redis is down for a few cool-downs, with posts by new authors and a profile edit
        await proxy.cut()
        cut_at = time.monotonic()
        await asyncio.sleep(0.5)
        vg_version = world.edit_user("vg", display_name="renamed")
        edited_at = time.monotonic()
        announced_at: float | None = None
        while time.monotonic() < cut_at + 3 * COOLDOWN + 1:
            seen()
            if announced_at is None and announced(collector, "vg", vg_version):
                announced_at = time.monotonic()
            await asyncio.sleep(0.02)
        stop_writing.set()
        await writer
        await wait_for(lambda: announced(collector, "vg", vg_version), timeout=20, what="profile.updated")
        cascade_seconds = (announced_at or time.monotonic()) - edited_at
        await wait_for(seen, timeout=20, what="every post delivered")
        still_open = not l2.available
    finally:
        stop_writing.set()
        await writer
        await proxy.restore()
        worker.stop.set()
        await task

    # Then no post waited on Redis much longer than a couple of socket timeouts (every Redis call
    # the breaker lets through is bounded by the socket timeout, not by client-side retries)
    in_outage = [(p, delivered_at[p] - at) for p, _, at in posts.written if at >= cut_at]
    slowest = max(in_outage, key=lambda item: item[1])
    budget = 4 * SOCKET_TIMEOUT + 0.5
    assert slowest[1] <= budget, f"post {slowest[0]} took {slowest[1]:.1f}s to fan out with Redis down"
    # and the profile cascade is not held up by the invalidation publish to a dead Redis
    assert cascade_seconds <= budget, f"profile.updated took {cascade_seconds:.1f}s with Redis down"
    assert still_open and len(in_outage) >= 40
    assert world.dead.items == []
