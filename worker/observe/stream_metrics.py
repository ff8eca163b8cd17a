"""The stream pipelines' metrics: events, batches, checkpoints, reopen state, ages, lag, latency.

Stream pipelines are rebuilt on every leadership term but their counters carry over, so they only
reset when the process restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from worker.observe.families import Rows, counter, gauge, histogram
from worker.streams import PROFILES

if TYPE_CHECKING:
    from worker.stats import StreamView, WorkerView

STREAM = ("stream",)


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


def stream_families(worker: WorkerView, now: float, mono: float) -> Iterator[Metric]:
    """Every stream family; ``now`` is time.time(), ``mono`` time.monotonic()."""
    pipelines = list(worker.pipelines)
    yield from _events(worker, pipelines)

    def per_stream(value: Callable[[StreamView], float | None]) -> Rows:
        rows = ((p.stream, value(p)) for p in pipelines)
        return [((stream,), v) for stream, v in rows if v is not None]

    yield counter(
        "batches", "Micro-batches handed to the handler.", STREAM, per_stream(lambda p: p.stats.batches)
    )
    yield counter(
        "stream_reopens",
        "Change streams reopened after an error.",
        STREAM,
        per_stream(lambda p: p.stats.reopens),
    )
    yield counter(
        "stream_large_events",
        "Change events over MongoDB's 16 MB limit: reassembled from fragments (split) or let through "
        "without their documents and dead-lettered (skipped).",
        ("stream", "outcome"),
        [((p.stream, "split"), p.stats.split_events) for p in pipelines]
        + [((p.stream, "skipped"), p.stats.oversize_skipped) for p in pipelines],
    )
    yield counter(
        "checkpoints_saved", "Checkpoints written.", STREAM, per_stream(lambda p: p.stats.checkpoints_saved)
    )
    yield counter(
        "stream_gaps",
        "Windows of history skipped after the change stream lost its resume point.",
        STREAM,
        per_stream(lambda p: p.stats.gaps),
    )
    yield gauge(
        "in_flight_events", "Events read but not finished.", STREAM, per_stream(lambda p: p.in_flight)
    )
    yield histogram(
        "event_latency_seconds",
        "Seconds from a change's write (wallTime, else clusterTime) to its event handled by this "
        "process; for a post, until the last of its fan-out jobs is confirmed.",
        STREAM,
        [((p.stream,), p.stats.latency) for p in pipelines],
    )
    if worker.role != "leader":
        return  # a standby tails nothing: ages of its last term's pipelines would only mislead

    def age(p: StreamView) -> float | None:
        saved = checkpoint_saved_at(p)
        return None if saved is None else max(0.0, now - saved)

    yield gauge(
        "checkpoint_age_seconds",
        "Seconds since the stream's checkpoint was last saved.",
        STREAM,
        per_stream(age),
    )
    yield gauge(
        "change_stream_lag_seconds",
        "Seconds between now and the cluster time of the oldest unfinished event (0 when caught up).",
        STREAM,
        per_stream(lambda p: change_stream_lag(p, now)),
    )
    yield gauge(
        "stream_up",
        "1 while the change stream reads; 0 while it fails to (re)open or read.",
        STREAM,
        per_stream(lambda p: float(p.reopening_since is None)),
    )
    yield gauge(
        "stream_reopen_failures",
        "Consecutive failures to (re)open or read the change stream (0 when it reads).",
        STREAM,
        per_stream(lambda p: p.reopen_failures),
    )
    yield gauge(
        "last_progress_age_seconds",
        "Seconds since a change-stream getMore last returned.",
        STREAM,
        per_stream(lambda p: max(0.0, mono - p.last_progress)),
    )


def _events(worker: WorkerView, pipelines: Sequence[StreamView]) -> Iterator[Metric]:
    """Events read, finished (handled or dead-lettered: disjoint, so they sum) and retried."""
    labels = ("stream", "type")
    read: list[tuple[Sequence[str], float]] = []
    finished: list[tuple[Sequence[str], float]] = []
    retries: list[tuple[Sequence[str], float]] = []
    for p in pipelines:
        for (op, outcome), n in sorted(p.stats.by_type.items()):
            if outcome == "read":
                read.append(((p.stream, op), n))
            elif outcome in ("handled", "dead_lettered"):
                finished.append(((p.stream, op, outcome), n))
            elif outcome == "retried":
                retries.append(((p.stream, op), n))
    yield counter("events_read", "Change events taken off the change stream.", labels, read)
    yield counter(
        "events_finished",
        "Change events finished: handled, or dead_lettered (stored with the reason and skipped).",
        (*labels, "outcome"),
        finished,
    )
    yield counter(
        "event_retries", "Retry attempts of change events (3 retries of one event add 3).", labels, retries
    )
    if any(p.stream == PROFILES.name for p in pipelines):
        yield counter(
            "profile_updates_ignored",
            "Profile updates that touched no display field: handled, nothing to do.",
            (),
            [((), worker.runtime.profiles.stats.ignored)],
        )
