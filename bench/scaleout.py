"""Scale-out: the tailer in this process, fan-out workers in processes of their own, over the real
job queues (RabbitMQ quorum queues of this run's own), compared with bare aio-pika publishers.

Rounds, one pair of fan-out processes (bench/fanout_proc.py) for all of them:

1. one fan-out process on jobs already waiting in the queues, vs one bare publisher replaying the
   very chunk sizes it published, with the same window;
2. the tailer emitting the jobs of a burst of posts while two fan-out processes consume them, vs
   two bare publishers in parallel;
3. ordinary posts offered open loop at half of round 2's posts/s while posts to ``star``
   followers (a backlog on the bulk lane) fan out back to back: the ordinary posts' p99;
4. (memory) each process's RSS growth over rounds 3 and 5;
5. one post to ``big_star`` followers, event to last confirm, two fan-out processes.

The follower graph is in memory (the stand-in, NOT MongoDB) in every process that reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.graph import GraphSpec, SocialGraph, follower_id
from bench.probes import PeakRss, percentile
from bench.rig import Rig
from handlers.ids import encode_post_id
from worker.settings import Settings
from worker.streams import POSTS

Tick = Callable[[int], None]
STAR, BIG_STAR = "star-1m", "star-10m"


@dataclass(frozen=True)
class ScaleSizes:
    graph: GraphSpec
    one_posts: int = 3_000  # round 1
    two_posts: int = 5_000  # round 2
    half_load_seconds: float = 10.0  # round 3
    star: int = 1_000_000
    big_star: int = 10_000_000  # round 5; 0 skips it
    max_star_posts: int = 60
    limit_seconds: float = 600.0


class Proc:
    """A child process of bench/fanout_proc.py, driven over its stdin and stdout."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.acked = 0
        self._base = 0
        self._ready = asyncio.Event()
        self._results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in quit)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.fanout_proc",
            orjson.dumps(self.cfg).decode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            limit=2**28,  # a round's result is one line with every chunk size
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            line = raw.decode().strip()
            if line == "ready":
                self._ready.set()
            elif line.startswith("acked "):
                self.acked = int(line[6:])
            elif line.startswith("result "):
                self._results.put_nowait(orjson.loads(line[7:]))

    def _check(self) -> None:
        if self._reader is not None and self._reader.done():
            self._stderr.seek(0)
            raise RuntimeError(
                f"{self.cfg['mode']} process died:\n{self._stderr.read().decode(errors='replace')}"
            )

    async def _until(self, ready: Callable[[], bool], limit: float) -> None:
        deadline = time.monotonic() + limit
        while not ready():
            self._check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.cfg['mode']} process: no progress in {limit:.0f}s")
            await asyncio.sleep(0.002)

    async def ready(self, limit: float = 300.0) -> None:
        await self._until(self._ready.is_set, limit)

    def _send(self, command: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(command.encode() + b"\n")

    def go(self) -> None:
        self._base = self.acked
        self._send("go")

    @property
    def round_acked(self) -> int:
        return self.acked - self._base

    async def end(self, limit: float = 300.0) -> dict[str, Any]:
        self._send("end")
        await self._until(lambda: not self._results.empty(), limit)
        return self._results.get_nowait()

    async def quit(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(Exception):
            self._send("quit")
        try:
            await asyncio.wait_for(self._proc.wait(), 30)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            await self._reader
        self._stderr.close()


async def _wait_round(rig: Rig, procs: Sequence[Proc], posts: int, jobs_before: int, limit: float) -> int:
    """Until the tailer has handled ``posts`` posts in all and the fan-out processes have acked every
    job it emitted since ``jobs_before``. Returns that number of jobs."""
    await rig.wait_handled(posts, 0, limit)
    jobs = _jobs(rig) - jobs_before
    deadline = time.monotonic() + limit
    while sum(p.round_acked for p in procs) < jobs:
        for p in procs:
            p._check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"fan-out processes acked {sum(p.round_acked for p in procs)}/{jobs} jobs")
        await asyncio.sleep(0.002)
    return jobs


def _jobs(rig: Rig) -> int:
    assert rig.runtime is not None and rig.runtime.jobs is not None
    return rig.runtime.jobs.stats.confirmed


async def _bare(sizes: Sequence[array[int]], window: int, folder: Path) -> dict[str, Any]:
    """One bare aio-pika publisher per entry, in processes of their own, started together."""
    procs = []
    for i, sample in enumerate(sizes):
        path = folder / f"sizes-{i}"
        path.write_bytes(sample.tobytes())
        procs.append(Proc({"mode": "ceiling", "sizes_file": str(path), "window": window}))
    try:
        for p in procs:
            await p.start()
        for p in procs:
            await p.ready()
        for p in procs:
            p.go()
        runs = [await p.end(600) for p in procs]
    finally:
        for p in procs:
            await p.quit()
    started = min(r["started"] for r in runs)
    finished = max(r["started"] + r["seconds"] for r in runs)
    messages = sum(r["messages"] for r in runs)
    return {
        "processes": len(runs),
        "messages": messages,
        "delivered": sum(r["delivered"] for r in runs),
        "seconds": finished - started,
        "messages_per_s": messages / (finished - started),
        "cpu_us_per_message": sum(r["cpu_us_per_message"] * r["messages"] for r in runs) / max(1, messages),
        "mean_bytes": sum(r["mean_bytes"] * r["messages"] for r in runs) / max(1, messages),
    }


def _summary(rounds: list[dict[str, Any]], since: float, delivered: int, jobs: int) -> dict[str, Any]:
    """One round over its fan-out processes: from ``since`` (or the first chunk) to the last confirm."""
    messages = sum(r["messages"] for r in rounds)
    last = max(r["last_done"] for r in rounds)
    start = since or min(r["first_send"] for r in rounds if r["first_send"])
    cpu = sum(r["cpu_seconds"] for r in rounds)
    return {
        "processes": len(rounds),
        "jobs": jobs,
        "jobs_acked": sum(r["jobs"] for r in rounds),
        "messages": messages,
        "recipients": sum(r["recipients"] for r in rounds),
        "delivered_to_queue": delivered,
        "seconds": last - start,
        "messages_per_s": messages / (last - start),
        "messages_per_process": [r["messages"] for r in rounds],
        "fanout_cpu_us_per_message": 1e6 * cpu / max(1, messages),
        "fanout_cpu_share": cpu / (last - start) / len(rounds),  # of one core, per process
        "bulk_jobs": sum(1 for r in rounds for _, lane, _ in r["done"] if lane == "bulk"),
        "rss_growth_mb": [r["rss_growth_mb"] for r in rounds],
        "rss_before_mb": [r["rss_before_mb"] for r in rounds],
    }


async def scaleout(base: Settings, spec: GraphSpec, ss: ScaleSizes, seed: int, tick: Tick) -> dict[str, Any]:
    graph = SocialGraph(spec)
    rig = Rig(base, graph, tailer=True)
    stars = {STAR: ss.star, **({BIG_STAR: ss.big_star} if ss.big_star else {})}
    for uid, count in stars.items():
        rig.add_user(uid, [follower_id(n) for n in range(count)])
    await rig.start()
    assert rig.queue is not None
    window, chunk = base.rabbitmq.publish_window, base.pipeline.chunk_size
    cfg = {
        "mode": "fanout",
        "run_id": rig.run_id,
        "window": window,
        "chunk_size": chunk,
        "graph": asdict(spec),
        "stars": stars,
        "prefetch": [base.fanout.ordinary_prefetch, base.fanout.bulk_prefetch],
    }
    a, b = Proc(cfg), Proc(cfg)
    out: dict[str, Any] = {
        "range_size": rig.settings.fanout.range_size,
        "chunk_size": chunk,
        "window": window,
        "ordinary_prefetch": base.fanout.ordinary_prefetch,
        "bulk_prefetch": base.fanout.bulk_prefetch,
    }
    posts = 0
    folder = tempfile.TemporaryDirectory(prefix="fanout-scaleout-")
    try:
        await a.start()
        await b.start()  # it loads its graph meanwhile, and consumes nothing before its first round
        await a.ready()
        await b.ready()
        tick(1)

        # 1. one fan-out process on jobs already waiting in the lanes
        before = _jobs(rig)
        for author in graph.authors(ss.one_posts, seed):
            rig.post(author)
        posts += ss.one_posts
        await rig.wait_handled(posts, 0, ss.limit_seconds)
        a.go()
        jobs = await _wait_round(rig, [a], posts, before, ss.limit_seconds)
        ra = await a.end()
        one = _summary([ra], 0.0, await rig.queue.drain_count(), jobs)
        one["ceiling"] = await _bare([array("I", ra["sizes"])], window, Path(folder.name))
        one["ratio"] = one["messages_per_s"] / one["ceiling"]["messages_per_s"]
        out["one"] = one
        tick(1)

        # 2. the tailer emitting while two fan-out processes consume
        before = _jobs(rig)
        a.go()
        b.go()
        started = time.time()
        for author in graph.authors(ss.two_posts, seed + 1):
            rig.post(author)
        posts += ss.two_posts
        await rig.wait_handled(posts, 0, ss.limit_seconds)
        tailer_seconds = time.time() - started  # every job of the burst confirmed by the broker
        jobs = await _wait_round(rig, [a, b], posts, before, ss.limit_seconds)
        ra, rb = await a.end(), await b.end()
        two = _summary([ra, rb], started, await rig.queue.drain_count(), jobs)
        two["posts_per_s"] = ss.two_posts / two["seconds"]
        two["tailer_seconds"] = tailer_seconds
        two["ceiling"] = await _bare(
            [array("I", ra["sizes"]), array("I", rb["sizes"])], window, Path(folder.name)
        )
        two["ratio"] = two["messages_per_s"] / two["ceiling"]["messages_per_s"]
        out["two"] = two
        tick(1)

        # 3. ordinary posts at half load while celebrity posts fan out back to back
        rate = two["posts_per_s"] / 2
        per_star = math.ceil(ss.star / chunk)
        # Twice what round 2's rate could fan out in the window, so the backlog outlasts it
        # (stars_outlasted_window says whether it did); what is left after the window only
        # lengthens the round.
        backlog = 2 * ss.half_load_seconds * two["messages_per_s"] / per_star
        star_posts = max(1, min(ss.max_star_posts, math.ceil(backlog)))
        before = _jobs(rig)
        a.go()
        b.go()
        with PeakRss() as tailer_rss:
            for _ in range(star_posts):
                rig.post(STAR)
            written: dict[str, float] = {}
            count = int(rate * ss.half_load_seconds)
            authors = graph.authors(count, seed + 2)
            t0 = time.time()
            for i, author in enumerate(authors):
                delay = t0 + i / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                written[encode_post_id(rig.post(author))] = t0 + i / rate
            window_end = time.time()
            posts += star_posts + count
            jobs = await _wait_round(rig, [a, b], posts, before, ss.limit_seconds)
        ra, rb = await a.end(), await b.end()
        done = [(p, lane, t) for r in (ra, rb) for p, lane, t in r["done"]]
        # Ordinary posts fit one range (the ordinary lane); the workload's authors with more
        # followers than range_size go to the bulk lane, behind the celebrity backlog: apart.
        latencies = [t - written[p] for p, lane, t in done if lane == "ordinary" and p in written]
        last: dict[str, float] = {}
        for p, lane, t in done:
            if lane == "bulk" and p in written:
                last[p] = max(t, last.get(p, 0.0))
        large = [t - written[p] for p, t in last.items()]
        bulk = [t for p, lane, t in done if lane == "bulk" and p not in written]
        half = _summary([ra, rb], t0, await rig.queue.drain_count(), jobs)
        half.update(
            {
                "offered_posts_per_s": rate,
                "ordinary_posts": count,
                "ordinary_done": len(latencies),
                "large_posts_done": len(large),
                "large_latency_p50_ms": 1e3 * percentile(large, 50),
                "large_latency_p99_ms": 1e3 * percentile(large, 99),
                "latency_p50_ms": 1e3 * percentile(latencies, 50),
                "latency_p99_ms": 1e3 * percentile(latencies, 99),
                "latency_max_ms": 1e3 * max(latencies, default=math.nan),
                "star_followers": ss.star,
                "star_posts": star_posts,
                "star_ranges_done_in_window": sum(1 for t in bulk if t <= window_end),
                # The bulk lane was never idle while ordinary posts were offered:
                "stars_outlasted_window": max(bulk, default=0.0) >= window_end,
                "tailer_rss_growth_mb": tailer_rss.growth / 2**20,
            }
        )
        out["half_load"] = half
        tick(1)

        # 5. one post to big_star followers
        if ss.big_star:
            before = _jobs(rig)
            a.go()
            b.go()
            with PeakRss() as tailer_rss:
                started = time.time()
                rig.post(BIG_STAR)
                posts += 1
                jobs = await _wait_round(rig, [a, b], posts, before, ss.limit_seconds)
            ra, rb = await a.end(), await b.end()
            big = _summary([ra, rb], started, await rig.queue.drain_count(), jobs)
            big["followers"] = ss.big_star
            big["tailer_rss_growth_mb"] = tailer_rss.growth / 2**20
            out["big"] = big
        tick(1)
        out["dead_lettered"] = rig.dead_lettered
        out["retried"] = rig.retries
        out["tailer_posts"] = rig.handled(POSTS.name)
    finally:
        await a.quit()
        await b.quit()
        await rig.stop()
        folder.cleanup()
    return out
