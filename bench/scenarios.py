"""The benchmark scenarios. Each drives a Rig and returns plain numbers for the report."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.graph import SocialGraph, Write, follower_id, profile, workload
from bench.peer import PeerProcess, storm_user
from bench.probes import percentile, process_peak_rss
from bench.rig import Rig
from worker.streams import POSTS, PROFILES

Tick = Callable[[int], None]

SWEEP_FOLLOWERS = (1, 10, 100, 1_000, 10_000, 50_000)


@dataclass(frozen=True)
class Sizes:
    posts: int = 20_000
    edit_rate: float = 0.02
    warmup_posts: int = 2_000
    prior_posts: int = 1_000_000  # about an hour of posts at the measured rate
    half_load_seconds: float = 10.0
    storm_users: int = 1_000
    storm_posts_per_user: int = 100
    sweep_messages: int = 2_000  # per follower-count bucket, for the worker
    naive_messages: int = 1_500  # per bucket and for the steady comparison
    ceiling_messages: int = 60_000
    celebrity: tuple[int, ...] = (100_000, 1_000_000)


def sweep_user(followers: int) -> str:
    return f"s{followers:07d}"


def add_sweep_users(rig: Rig, offset: int = 2_000_000) -> None:
    """Users with exactly 1, 10, … 50,000 followers, for the followers-per-post sweep."""
    for i, count in enumerate(SWEEP_FOLLOWERS):
        base = offset + i * 100_000
        rig.add_user(sweep_user(count), [follower_id(base + n) for n in range(count)])


def _snapshot(rig: Rig) -> dict[str, int]:
    assert rig.runtime is not None and rig.round_trips is not None
    c = rig.runtime.cache.stats
    pipelines = rig.worker.pipelines  # type: ignore[union-attr]
    return {
        "l1": c.l1_hits,
        "l2": c.l2_hits,
        "l3": c.l3_hits,
        "missing": c.not_found,
        "shared": c.shared_waits,
        "source_queries": rig.source.queries,
        "redis": rig.round_trips.total,
        "mget": rig.round_trips.by_command["MGET"],
        "batches": sum(p.stats.batches for p in pipelines if p.stream == POSTS.name),
        "all_batches": sum(p.stats.batches for p in pipelines),
        "messages": rig.runtime.publisher.stats.confirmed,
        "recipients": rig.posts.stats.recipients,
        "posts": rig.handled(POSTS.name),
        "edits": rig.handled(PROFILES.name),
        "sizes": len(rig.sizes),
    }


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


async def _offer(rig: Rig, writes: list[Write], backlog: int, tick: Tick) -> tuple[int, int]:
    """Write as fast as the worker takes them, keeping at most ``backlog`` posts unfinished."""
    posts = edits = 0
    base = rig.handled(POSTS.name)
    for i, w in enumerate(writes):
        if w.edit:
            rig.edit(w.user)
            edits += 1
            continue
        while posts - (rig.handled(POSTS.name) - base) >= backlog:
            tick(rig.handled(POSTS.name) - base)
            await asyncio.sleep(0.002)
        rig.post(w.user)
        posts += 1
        if i % 100 == 99:
            await asyncio.sleep(0)
    return posts, edits


async def prime(rig: Rig, graph: SocialGraph, prior_posts: int, seed: int) -> dict[str, int]:
    """Bring the caches to their steady state: what a worker holds after an hour of this traffic.

    The authors of ``prior_posts`` earlier posts (another seed) are looked up through the worker's
    own read-through cache, in batches, so L2 (Redis) holds what the pipeline would have left there.
    In a steady state L2 entries are of every age, so each gets a remaining lifetime drawn
    uniformly over the TTL: those due to expire during the measured window do, and are fetched
    again. Authors the window brings that the hour did not still miss.
    """
    assert rig.runtime is not None and rig.runtime.cache.l2 is not None and rig.redis is not None
    authors = list(dict.fromkeys(graph.authors(prior_posts, seed)))
    for start in range(0, len(authors), 500):
        await rig.runtime.cache.get_many(authors[start : start + 500])
    rng = random.Random(seed)
    ttl = rig.settings.redis.ttl_seconds
    async with rig.redis.pipeline(transaction=False) as pipe:
        for author in authors:
            pipe.expire(rig.runtime.cache.l2.key(author), rng.randint(1, ttl))
        await pipe.execute()
    # L1 would hold only the last minute's authors, at every age; primed all at once it would hide
    # the L2 ageing for a minute and then expire together. Start the window with it empty instead.
    rig.runtime.cache.l1.clear()
    return {"prior_posts": prior_posts, "distinct_authors": len(authors)}


async def steady(rig: Rig, graph: SocialGraph, sizes: Sizes, seed: int, tick: Tick) -> dict[str, Any]:
    """Steady load: the Zipf workload with edits mixed in, written as fast as the worker goes.

    The first ``warmup_posts`` run from empty caches and are reported as the cold start; the caches
    are then brought to their steady state (``prime``) and the rest is the measured window.
    """
    writes = list(workload(graph, sizes.posts, sizes.edit_rate, seed))
    backlog = rig.settings.pipeline.max_in_flight_events
    posts_before = len(rig.offered)
    warm_at, seen = len(writes), 0
    for i, w in enumerate(writes):
        seen += not w.edit
        if seen > sizes.warmup_posts:
            warm_at = i
            break
    cold_start = _snapshot(rig)
    p, e = await _offer(rig, writes[:warm_at], backlog, tick)
    await rig.wait_handled(posts_before + p, e)
    await rig.queue.drain_count()  # type: ignore[union-attr]
    cold = _delta(_snapshot(rig), cold_start)
    primed = await prime(rig, graph, sizes.prior_posts, seed + 1_000)
    warm = _snapshot(rig)
    first = len(rig.offered)
    started, cpu = time.monotonic(), time.process_time()
    p2, e2 = await _offer(rig, writes[warm_at:], backlog, lambda n: tick(p + n))
    await rig.wait_handled(posts_before + p + p2, e + e2)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    tick(p + p2)
    d = _delta(_snapshot(rig), warm)
    delivered = await rig.queue.drain_count()  # type: ignore[union-attr]
    lookups = d["l1"] + d["l2"] + d["l3"] + d["missing"] + d["shared"]
    lat = rig.latencies(since=first)
    return {
        "posts": d["posts"],
        "edits": d["edits"],
        "warmup_posts": p,
        "cold_start": {
            "posts": cold["posts"],
            "source_queries": cold["source_queries"],
            "source_queries_per_1000_posts": 1000 * cold["source_queries"] / max(1, cold["posts"]),
            "source_queries_per_batch": cold["source_queries"] / max(1, cold["batches"]),
        },
        "primed": primed,
        "seconds": elapsed,
        "posts_per_s": d["posts"] / elapsed,
        "messages": d["messages"],
        "messages_per_s": d["messages"] / elapsed,
        # The whole process: the worker, the MongoDB stand-in and the bench's own driver.
        "cpu_us_per_message": 1e6 * cpu / max(1, d["messages"]),
        "recipients": d["recipients"],
        "recipients_per_s": d["recipients"] / elapsed,
        "delivered_to_queue": delivered,
        "latency_p50_ms": percentile(lat, 50) * 1000,
        "latency_p99_ms": percentile(lat, 99) * 1000,
        "hit_ratio": {
            "l1": d["l1"] / max(1, lookups),
            "l2": d["l2"] / max(1, lookups),
            "l3": (d["l3"] + d["missing"]) / max(1, lookups),
            "shared": d["shared"] / max(1, lookups),
        },
        "source_queries": d["source_queries"],
        "source_queries_per_1000_posts": 1000 * d["source_queries"] / max(1, d["posts"]),
        "batches": d["batches"],
        "source_queries_per_batch": d["source_queries"] / max(1, d["batches"]),
        # Both streams' batches: profile batches send Redis commands too (replace, publish).
        "redis_round_trips_per_batch": d["redis"] / max(1, d["all_batches"]),
        "mget_per_post_batch": d["mget"] / max(1, d["batches"]),
        "mean_message_bytes": sum(rig.sizes[-d["sizes"] :]) / max(1, d["sizes"]) if d["sizes"] else 0,
        "peak_rss_mb": process_peak_rss() / 2**20,
    }


async def half_load(
    rig: Rig, graph: SocialGraph, posts_per_s: float, seconds: float, edit_rate: float, seed: int, tick: Tick
) -> dict[str, Any]:
    """Open loop: posts written on a fixed schedule at ``posts_per_s``; latency from the schedule,
    so a stall is charged to every post it delays."""
    count = max(1, int(posts_per_s * seconds))
    writes = list(workload(graph, count, edit_rate, seed))
    first = len(rig.offered)
    before_posts, before_edits = rig.handled(POSTS.name), rig.handled(PROFILES.name)
    confirmed = rig.confirmed
    interval = 1 / posts_per_s
    start = time.monotonic() + 0.01
    n = edits = 0
    for w in writes:
        if w.edit:
            rig.edit(w.user)
            edits += 1
            continue
        due = start + n * interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        rig.post(w.user, at=due)
        n += 1
        tick(n)
    await rig.wait_handled(before_posts + n, before_edits + edits)
    delivered = await rig.queue.drain_count()  # type: ignore[union-attr]
    lat = rig.latencies(since=first)
    return {
        "messages": rig.confirmed - confirmed,
        "delivered_to_queue": delivered,
        "offered_posts_per_s": posts_per_s,
        "posts": n,
        "latency_p50_ms": percentile(lat, 50) * 1000,
        "latency_p99_ms": percentile(lat, 99) * 1000,
        "latency_max_ms": max(lat) * 1000 if lat else float("nan"),
    }


async def sweep(rig: Rig, sizes: Sizes, tick: Tick) -> list[dict[str, Any]]:
    """The worker's recipient deliveries/s by followers per post (one author per bucket)."""
    rows = []
    chunk = rig.settings.pipeline.chunk_size
    for count in SWEEP_FOLLOWERS:
        posts = max(1, sizes.sweep_messages // math.ceil(count / chunk))
        before, confirmed = rig.handled(POSTS.name), rig.confirmed
        recipients = rig.posts.stats.recipients
        started = time.monotonic()
        for _ in range(posts):
            rig.post(sweep_user(count))
        await rig.wait_handled(before + posts, rig.handled(PROFILES.name))
        elapsed = time.monotonic() - started
        delivered = rig.posts.stats.recipients - recipients  # type: ignore[union-attr]
        queued = await rig.queue.drain_count()  # type: ignore[union-attr]
        rows.append(
            {
                "followers": count,
                "posts": posts,
                "seconds": elapsed,
                "recipients_per_s": delivered / elapsed,
                "messages": rig.confirmed - confirmed,
                "delivered_to_queue": queued,
            }
        )
        tick(1)
    return rows


async def storm(rig: Rig, peer: PeerProcess, sizes: Sizes, tick: Tick) -> dict[str, Any]:
    """Profile storm: ``storm_users`` edits by users holding ``storm_posts_per_user`` posts each.

    ``peer`` is a second replica in a process of its own (bench.peer.PeerProcess); each edit's
    invalidation latency is from the write to that replica dropping the user from its L1.
    """
    users = [storm_user(i) for i in range(sizes.storm_users)]
    before = rig.handled(PROFILES.name)
    rewritten = rig.runtime.profiles.stats.posts_rewritten  # type: ignore[union-attr]
    started = time.monotonic()
    for i, uid in enumerate(users):
        rig.edit(uid)
        if i % 50 == 49:
            await asyncio.sleep(0)
    await rig.wait_handled(rig.handled(POSTS.name), before + len(users))
    elapsed = time.monotonic() - started
    tick(len(users))
    await asyncio.sleep(0.5)  # the last invalidations are on the wire to the peer
    done = rig.runtime.profiles.stats.posts_rewritten - rewritten  # type: ignore[union-attr]
    heard, stale = await peer.finish()
    lat = [heard[(u, 2)] - rig.edited[(u, 2)] for u in users if (u, 2) in heard]
    await rig.queue.drain_count()  # type: ignore[union-attr]
    return {
        "edits": len(users),
        "posts_rewritten": done,
        "seconds": elapsed,
        "rewrites_per_s": done / elapsed,
        "edits_per_s": len(users) / elapsed,
        "invalidations_received": len(lat),
        "invalidation_p50_ms": percentile(lat, 50) * 1000,
        "invalidation_p99_ms": percentile(lat, 99) * 1000,
        "peer_l1_stale_after": stale,
    }


def seed_storm_users(rig: Rig, sizes: Sizes, followers: int = 10) -> None:
    """Users with ``storm_posts_per_user`` already-enriched posts each, written before the worker starts."""
    for i in range(sizes.storm_users):
        uid = storm_user(i)
        rig.add_user(uid, [follower_id(3_000_000 + i * followers + n) for n in range(followers)])
        snap = {k: v for k, v in profile(uid).items() if k != "_id"}
        snap["user_id"] = uid
        for j in range(sizes.storm_posts_per_user):
            rig.db.insert(
                "posts", {"_id": f"{uid}-{j:04d}", "author_id": uid, "text": "x", "author_snapshot": snap}
            )
