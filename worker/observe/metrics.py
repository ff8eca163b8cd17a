"""Prometheus metrics, read from the live stats objects at scrape time.

Nothing on the hot path touches a metric: the pipeline, handlers, cache and publisher keep plain
integer fields (and one fixed-bucket latency histogram per stream), and a custom collector turns
them into metric families when Prometheus scrapes. Each WorkerView gets its own CollectorRegistry
(never the process-global default one), so tests and several workers in one process cannot
collide. docs/metrics.md lists every metric and the alerts.

The families are cut by concern: streams (stream_metrics.py), publishing and jobs
(delivery_metrics.py), the process and build (process_metrics.py); the cache and leadership here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from worker.observe.delivery_metrics import delivery_families
from worker.observe.families import counter, gauge
from worker.observe.process_metrics import register_process_collectors
from worker.observe.stream_metrics import (
    change_stream_lag,
    checkpoint_saved_at,
    reopening,
    stream_families,
)

if TYPE_CHECKING:
    from worker.stats import WorkerView

__all__ = [
    "CONTENT_TYPE",
    "WorkerCollector",
    "build_registry",
    "change_stream_lag",
    "checkpoint_saved_at",
    "render",
    "reopening",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class WorkerCollector(Collector):
    """Yields the worker's metric families on each scrape."""

    def __init__(
        self,
        worker: WorkerView,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._worker = worker
        self._wall = wall
        self._monotonic = monotonic

    def collect(self) -> Iterator[Metric]:
        yield from stream_families(self._worker, self._wall(), self._monotonic())
        yield from delivery_families(self._worker.runtime)
        yield from self._cache()
        yield from self._leadership()

    def _cache(self) -> Iterator[Metric]:
        cache = self._worker.runtime.cache
        c = cache.stats
        yield counter(
            "cache_hits",
            "Author snapshots found, by layer (l3 = the profile source).",
            ("layer",),
            [(("l1",), c.l1_hits), (("l2",), c.l2_hits), (("l3",), c.l3_hits)],
        )
        yield counter("cache_not_found", "Authors with no profile anywhere.", (), [((), c.not_found)])
        yield counter("source_queries", "Profile queries sent to MongoDB.", (), [((), c.source_queries)])
        l2 = cache.l2
        if l2 is None:
            return  # no Redis configured: absent, not "unavailable"
        yield counter("cache_l2_reads", "Redis MGETs issued by the cache.", (), [((), l2.mget_calls)])
        yield counter("cache_l2_errors", "Failed Redis calls (reads and writes).", (), [((), l2.errors)])
        yield gauge(
            "redis_available", "1 unless the Redis circuit breaker is open.", (), [((), float(l2.available))]
        )
        yield gauge(
            "cache_l2_repairs_pending",
            "Profile changes Redis missed while down, to be written when it answers.",
            (),
            [((), float(cache.repairs_pending))],
        )
        yield counter(
            "cache_l2_repairs_dropped",
            "Missed Redis writes dropped because the repair backlog was full (stale until TTL).",
            (),
            [((), c.repairs_dropped)],
        )

    def _leadership(self) -> Iterator[Metric]:
        w = self._worker
        yield gauge(
            "leader",
            "1 while this worker holds the lease and tails the streams.",
            (),
            [((), float(w.role == "leader"))],
        )
        yield gauge("leader_epoch", "Epoch of the lease this worker last held.", (), [((), w.epoch)])
        yield gauge("up", "1 while the worker serves scrapes.", (), [((), 1.0)])


def build_registry(worker: WorkerView, *, process: bool = True) -> CollectorRegistry:
    """A fresh registry holding this worker's collector and, unless ``process`` is False, the build
    info and the process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(worker))
    if process:
        register_process_collectors(registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (format 0.0.4), served with ``CONTENT_TYPE``."""
    return generate_latest(registry)
