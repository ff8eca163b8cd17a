"""Prometheus metrics, read from the live stats objects at scrape time.

Nothing on the hot path touches a metric: the pipeline, handlers, cache and publisher keep plain
integer fields, and a custom collector turns them into metric families when Prometheus scrapes.
Each WorkerView gets its own CollectorRegistry (never the process-global default one), so tests and
several workers in one process cannot collide. docs/metrics.md lists every metric and the alerts.

Stream pipelines are rebuilt on every leadership term, so their counters restart from zero then;
``rate()`` and ``increase()`` treat that as an ordinary counter reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from worker.streams import PROFILES

if TYPE_CHECKING:
    from worker.stats import StreamView, WorkerView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "fanout_"

Rows = Sequence[tuple[Sequence[str], float]]


def _counter(name: str, doc: str, labels: Sequence[str], rows: Rows) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def _gauge(name: str, doc: str, labels: Sequence[str], rows: Rows) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def _epoch_seconds(moment: datetime) -> float:
    """Cluster times come back tz-aware (``tz_aware=True``); a naive one is taken as UTC."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def checkpoint_saved_at(pipeline: StreamView) -> float | None:
    """time.time() of the newest checkpoint of this stream: saved by us, else the one loaded."""
    if pipeline.checkpoint_saved_at is not None:
        return pipeline.checkpoint_saved_at
    loaded = pipeline.checkpoint
    return _epoch_seconds(loaded.saved_at) if loaded is not None else None


def change_stream_lag(pipeline: StreamView, now: float) -> float | None:
    """Seconds from the cluster time of the oldest unfinished event to now; 0 when nothing is in flight.

    With nothing in flight the worker has finished everything the server returned, so it is caught
    up: a quiet stream must not show its silence as lag. But a stream failing to (re)open or read
    sees nothing of what is written meanwhile: its lag is at least the time since its last
    successful read (``reopening_since``), and grows until it reads again. Until the watermark
    exposes the oldest pending event (``oldest_pending_time``), the last contiguous handled event
    stands in for it, which overstates the lag of the first event after a quiet spell.
    """
    since = pipeline.reopening_since
    down = None if since is None else max(0.0, now - since)
    lag: float | None = 0.0
    if pipeline.in_flight:
        mark = pipeline.watermark
        oldest = mark.oldest_pending_time or mark.event_time
        lag = None if oldest is None else max(0.0, now - _epoch_seconds(oldest))
    return lag if down is None else max(lag or 0.0, down)


def reopening(pipeline: StreamView, now: float) -> str | None:
    """``reopening (3 failures, 42 s)`` while the stream fails to (re)open or read, else None."""
    since = pipeline.reopening_since
    if since is None:
        return None
    failures = pipeline.reopen_failures
    return f"reopening ({failures} failure{'s' if failures != 1 else ''}, {max(0.0, now - since):.0f} s)"


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
        yield from self._streams()
        yield from self._fanout()
        yield from self._jobs()
        yield from self._cache()
        yield from self._leadership()

    def _streams(self) -> Iterator[Metric]:
        w = self._worker
        pipelines = list(w.pipelines)
        events: list[tuple[Sequence[str], float]] = []
        for p in pipelines:
            for (op, outcome), n in sorted(p.stats.by_type.items()):
                events.append(((p.stream, op, outcome), n))
            if p.stream == PROFILES.name:
                # Only updates can miss the display fields (a replace always counts as a change).
                events.append(((p.stream, "update", "ignored"), w.runtime.profiles.stats.ignored))
        yield _counter(
            "events",
            "Change events by stream, operation type and outcome (outcomes overlap: read, handled, "
            "dead_lettered, retried, ignored).",
            ("stream", "type", "outcome"),
            events,
        )

        def per_stream(value: Callable[[StreamView], float | None]) -> Rows:
            rows = ((p.stream, value(p)) for p in pipelines)
            return [((stream,), v) for stream, v in rows if v is not None]

        stream = ("stream",)
        yield _counter(
            "batches", "Micro-batches handed to the handler.", stream, per_stream(lambda p: p.stats.batches)
        )
        yield _counter(
            "stream_reopens",
            "Change streams reopened after an error.",
            stream,
            per_stream(lambda p: p.stats.reopens),
        )
        yield _counter(
            "stream_large_events",
            "Change events over MongoDB's 16 MB limit: reassembled from fragments (split) or let through "
            "without their documents and dead-lettered (skipped).",
            ("stream", "outcome"),
            [((p.stream, "split"), p.stats.split_events) for p in pipelines]
            + [((p.stream, "skipped"), p.stats.oversize_skipped) for p in pipelines],
        )
        yield _counter(
            "checkpoints_saved",
            "Checkpoints written.",
            stream,
            per_stream(lambda p: p.stats.checkpoints_saved),
        )
        yield _counter(
            "stream_gaps",
            "Windows of history skipped after the change stream lost its resume point.",
            stream,
            per_stream(lambda p: p.stats.gaps),
        )
        yield _gauge(
            "in_flight_events", "Events read but not finished.", stream, per_stream(lambda p: p.in_flight)
        )
        if w.role != "leader":
            return  # a standby tails nothing: ages of its last term's pipelines would only mislead
        now, mono = self._wall(), self._monotonic()

        def age(p: StreamView) -> float | None:
            saved = checkpoint_saved_at(p)
            return None if saved is None else max(0.0, now - saved)

        yield _gauge(
            "checkpoint_age_seconds",
            "Seconds since the stream's checkpoint was last saved.",
            stream,
            per_stream(age),
        )
        yield _gauge(
            "change_stream_lag_seconds",
            "Seconds between now and the cluster time of the oldest unfinished event (0 when caught up).",
            stream,
            per_stream(lambda p: change_stream_lag(p, now)),
        )
        yield _gauge(
            "stream_up",
            "1 while the change stream reads; 0 while it fails to (re)open or read.",
            stream,
            per_stream(lambda p: float(p.reopening_since is None)),
        )
        yield _gauge(
            "stream_reopen_failures",
            "Consecutive failures to (re)open or read the change stream (0 when it reads).",
            stream,
            per_stream(lambda p: p.reopen_failures),
        )
        yield _gauge(
            "last_progress_age_seconds",
            "Seconds since a change-stream getMore last returned.",
            stream,
            per_stream(lambda p: max(0.0, mono - p.last_progress)),
        )

    def _fanout(self) -> Iterator[Metric]:
        rt = self._worker.runtime
        pub = rt.publisher.stats
        yield _counter(
            "messages",
            "RabbitMQ publishes by outcome (published counts every attempt).",
            ("outcome",),
            [
                (("published",), pub.sent),
                (("confirmed",), pub.confirmed),
                (("returned",), pub.returned),
                (("nacked",), pub.nacked),
                (("retried",), pub.retried),
            ],
        )
        yield _counter("publisher_reconnects", "Reconnections to RabbitMQ.", (), [((), pub.reconnects)])
        yield _counter(
            "rabbitmq_blocked_episodes",
            "Times RabbitMQ blocked the publishing connection (connection.blocked: a resource alarm).",
            (),
            [((), pub.blocked_pauses)],
        )
        yield _counter(
            "rabbitmq_blocked_seconds",
            "Seconds publishing spent paused by connection.blocked (grows while a block lasts).",
            (),
            [((), pub.blocked_seconds)],
        )
        yield _gauge(
            "publishes_in_flight", "Publishes awaiting a confirm.", (), [((), rt.publisher.in_flight)]
        )
        posts = rt.posts.stats
        yield _counter("posts_handled", "Posts fanned out.", (), [((), posts.posts)])
        yield _counter("recipients", "Followers a post was fanned out to.", (), [((), posts.recipients)])
        yield _counter(
            "post_events",
            "Post edits and deletes: fanned out, ignored (no visible field), dead-lettered (author unknown).",
            ("event",),
            [
                (("updated",), posts.edits),
                (("deleted",), posts.deletes),
                (("edit_ignored",), posts.edits_ignored),
                (("delete_author_unknown",), posts.deletes_author_unknown),
            ],
        )
        profiles = rt.profiles.stats
        yield _counter(
            "profiles_deleted",
            "Deleted profiles tombstoned in every cache layer and on every replica.",
            (),
            [((), profiles.deleted)],
        )
        yield _counter(
            "profile_changes_stale",
            "Profile changes older than a version already seen (cache layers): not announced.",
            (),
            [((), profiles.stale)],
        )
        yield _counter(
            "profile_changes_unbumped",
            "Profile display changes that kept the version already seen with other content.",
            (),
            [((), profiles.unbumped)],
        )
        yield _counter(
            "follower_ids_skipped",
            "Follow edges skipped because their follower_id is not a string.",
            (),
            [((), rt.posts.invalid_follower_ids)],
        )

    def _jobs(self) -> Iterator[Metric]:
        rt = self._worker.runtime
        emitted = rt.posts.emitter.stats
        rows: list[tuple[Sequence[str], float]] = [
            (("ordinary", "published"), emitted.ordinary),
            (("bulk", "published"), emitted.bulk),
        ]
        runner = rt.fanout
        if runner is not None:
            for lane, consumer in sorted(runner.consumers.items()):
                c = consumer.stats
                rows += [
                    ((lane, "received"), c.jobs_received),
                    ((lane, "acked"), c.jobs_acked),
                    ((lane, "redelivered"), c.redelivered),
                    ((lane, "requeued"), c.requeued),
                    ((lane, "dead_lettered"), c.dead_lettered),
                    ((lane, "malformed"), c.malformed),
                ]
        yield _counter(
            "jobs",
            "Fan-out jobs by lane and outcome: published (by the tailer, confirmed), received, acked, "
            "redelivered, requeued, dead_lettered, malformed (by this process's fan-out workers).",
            ("lane", "outcome"),
            rows,
        )
        yield _counter(
            "posts_deferred",
            "Posts over their author's rate whose jobs went through the delay queue (never dropped).",
            (),
            [((), emitted.deferred_posts)],
        )
        yield _gauge(
            "post_ranges_max",
            "The most follower ranges one post was split into (a post over fanout.range_size followers).",
            (),
            [((), emitted.largest_post_ranges)],
        )
        if runner is None:
            return
        yield _gauge(
            "job_queue_depth",
            "Jobs ready in each lane's queue (read every 5 s by a fan-out process).",
            ("lane",),
            [((lane,), depth) for lane, depth in sorted(runner.depths.items()) if depth is not None],
        )
        yield _gauge(
            "jobs_in_flight",
            "Jobs this process holds unacknowledged, by lane (bounded by the lane's prefetch).",
            ("lane",),
            [((lane,), c.in_flight) for lane, c in sorted(runner.consumers.items())],
        )
        yield _gauge(
            "workers_connected",
            "1 while this process's fan-out workers are connected.",
            (),
            [((), float(runner.connected))],
        )
        yield _counter(
            "worker_reconnects", "Reconnections of the fan-out workers.", (), [((), runner.reconnects)]
        )

    def _cache(self) -> Iterator[Metric]:
        cache = self._worker.runtime.cache
        c = cache.stats
        yield _counter(
            "cache_hits",
            "Author snapshots found, by layer (l3 = the profile source).",
            ("layer",),
            [(("l1",), c.l1_hits), (("l2",), c.l2_hits), (("l3",), c.l3_hits)],
        )
        yield _counter("cache_not_found", "Authors with no profile anywhere.", (), [((), c.not_found)])
        yield _counter("source_queries", "Profile queries sent to MongoDB.", (), [((), c.source_queries)])
        l2 = cache.l2
        if l2 is None:
            return  # no Redis configured: absent, not "unavailable"
        yield _counter("cache_l2_reads", "Redis MGETs issued by the cache.", (), [((), l2.mget_calls)])
        yield _counter("cache_l2_errors", "Failed Redis calls (reads and writes).", (), [((), l2.errors)])
        yield _gauge(
            "redis_available", "1 unless the Redis circuit breaker is open.", (), [((), float(l2.available))]
        )
        yield _gauge(
            "cache_l2_repairs_pending",
            "Profile changes Redis missed while down, to be written when it answers.",
            (),
            [((), float(cache.repairs_pending))],
        )
        yield _counter(
            "cache_l2_repairs_dropped",
            "Missed Redis writes dropped because the repair backlog was full (stale until TTL).",
            (),
            [((), c.repairs_dropped)],
        )

    def _leadership(self) -> Iterator[Metric]:
        w = self._worker
        role = w.role
        yield _gauge(
            "leader",
            "1 while this worker holds the lease and tails the streams.",
            (),
            [((), float(role == "leader"))],
        )
        yield _gauge(
            "leader_epoch",
            "Epoch of the lease this worker last held.",
            (),
            [((), w.epoch)],
        )
        yield _gauge("up", "1 while the worker serves scrapes.", (), [((), 1.0)])


def build_registry(worker: WorkerView) -> CollectorRegistry:
    """A fresh registry holding only this worker's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(worker))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (format 0.0.4), served with ``CONTENT_TYPE``."""
    return generate_latest(registry)
