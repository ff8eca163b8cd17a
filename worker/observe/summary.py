"""A periodic one-line summary for operators tailing the logs: rates, lag, cache hit rate, in flight."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from loguru import logger

from worker.observe.metrics import change_stream_lag, reopening
from worker.stats import WorkerView


@dataclass(slots=True)
class _Totals:
    at: float
    posts: int
    messages: int
    recipients: int
    hits: int
    lookups: int


def _totals(worker: WorkerView) -> _Totals:
    rt = worker.runtime
    cs = rt.cache.stats
    hits = cs.l1_hits + cs.l2_hits
    return _Totals(
        time.monotonic(),
        rt.posts.stats.posts,
        rt.publisher.stats.confirmed,
        rt.posts.stats.recipients,
        hits,
        hits + cs.l3_hits + cs.not_found,
    )


def summary_line(worker: WorkerView, before: _Totals, now: _Totals) -> str:
    seconds = max(now.at - before.at, 1e-9)
    lookups = now.lookups - before.lookups
    hit_rate = f"{100 * (now.hits - before.hits) / lookups:.0f}%" if lookups else "-"
    wall = time.time()
    lags = [
        f"{p.stream} {lag:.1f}s" + (f" {state}" if (state := reopening(p, wall)) else "")
        for p in worker.pipelines
        if (lag := change_stream_lag(p, wall)) is not None
    ]
    in_flight = sum(p.in_flight for p in worker.pipelines)
    return (
        f"summary: {worker.role} epoch {worker.epoch} | "
        f"{(now.posts - before.posts) / seconds:.1f} posts/s, "
        f"{(now.messages - before.messages) / seconds:.1f} msg/s, "
        f"{(now.recipients - before.recipients) / seconds:.0f} recipients/s | "
        f"lag {', '.join(lags) or '-'} | cache hit {hit_rate} | "
        f"in flight {in_flight} events, {worker.runtime.publisher.in_flight} publishes"
    )


async def summary_loop(worker: WorkerView, interval_seconds: float) -> None:
    before = _totals(worker)
    while True:
        await asyncio.sleep(interval_seconds)
        now = _totals(worker)
        logger.info(summary_line(worker, before, now))
        before = now
