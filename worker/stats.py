"""The counters the stream pipelines and fan-out consumers keep, and the small stats interface
observability reads: ``/healthz``, ``/readyz``, ``/metrics``, the
systemd watchdog and status line, and the summary log line.

The pipeline, the cache, the publisher and the handlers expose these fields; observability reads
them directly, never private attributes and never with ``getattr`` defaults, so mypy checks both
sides. Tests pass any object with these fields.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from enrichment.cache import CacheStats
from handlers.emitter import EmitStats
from handlers.events import ChangeEvent
from handlers.jobs import Lane
from handlers.posts import PostStats
from handlers.profiles import ProfileStats
from worker.ports import Checkpoint, PublishStats

# Upper bounds (seconds) of the event-latency histogram: the write's time has 1 s resolution on
# servers that send only clusterTime, so the low buckets matter where events carry wallTime.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(slots=True)
class LatencyHistogram:
    """Fixed buckets, so memory stays bounded whatever the traffic; read as a Prometheus histogram."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))  # last: +Inf
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)  # a clock behind MongoDB's would give a negative latency
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def written_at(event: ChangeEvent) -> datetime | None:
    """When the change was written: ``wallTime`` (milliseconds; MongoDB 6.0+), else ``clusterTime``
    (whole seconds)."""
    wall = event.raw.get("wallTime")
    if isinstance(wall, datetime):
        return wall if wall.tzinfo is not None else wall.replace(tzinfo=UTC)
    return event.cluster_time


@dataclass(slots=True)
class StreamStats:
    read: int = 0
    handled: int = 0
    dead_lettered: int = 0
    retries: int = 0
    batches: int = 0
    idle_polls: int = 0
    checkpoints_saved: int = 0
    reopens: int = 0
    gaps: int = 0
    split_events: int = 0  # events over 16 MB reassembled from fragments
    oversize_skipped: int = 0  # events over 16 MB let through without their documents ("skip")
    # (operationType, outcome) → count, outcome in read | handled | dead_lettered | retried
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Seconds from the write to the event handled (for a post: its last job confirmed).
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def count(self, op: str, outcome: str, n: int = 1) -> None:
        self.by_type[(op, outcome)] += n

    def observe_handled(self, event: ChangeEvent, now: float | None = None) -> None:
        """Record the event's write-to-handled latency, when the event says when it was written."""
        written = written_at(event)
        if written is not None:
            self.latency.observe((time.time() if now is None else now) - written.timestamp())

    def count_size(self, fragments: int, oversize_bytes: int | None) -> None:
        if fragments > 1:
            self.split_events += 1
        if oversize_bytes is not None:
            self.oversize_skipped += 1


@dataclass(slots=True)
class FanoutStats:
    jobs_received: int = 0
    jobs_acked: int = 0
    redelivered: int = 0  # deliveries of a job seen before (x-delivery-count > 0 or the flag)
    requeued: int = 0  # failed attempts handed back to the queue
    dead_lettered: int = 0  # by this worker: malformed, permanent error, or last delivery failed
    malformed: int = 0
    last_job_wait_seconds: float | None = None  # how long the last job taken had waited in its queue
    last_job_taken_at: float = 0.0  # wall clock (time.time()) when it was taken
    chunks: int = 0
    recipients: int = 0


ReadyCheck = Callable[[], Awaitable[bool]]


class WatermarkView(Protocol):
    @property
    def event_time(self) -> datetime | None:
        """Cluster time of the last event before the contiguous checkpoint position."""
        ...

    @property
    def oldest_pending_time(self) -> datetime | None:
        """Cluster time of the oldest event read but not finished."""
        ...


class StreamView(Protocol):
    """One stream's pipeline."""

    @property
    def stream(self) -> str: ...

    @property
    def stats(self) -> StreamStats: ...

    @property
    def watermark(self) -> WatermarkView: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def last_progress(self) -> float:
        """time.monotonic() when a getMore last came back."""
        ...

    @property
    def alive_at(self) -> float:
        """time.monotonic() of the last sign of life: a getMore, a reopen tried, or a legitimate wait."""
        ...

    @property
    def waiting_for(self) -> str | None:
        """What the reader legitimately waits for (room in flight, its checkpoint), if anything."""
        ...

    @property
    def reopen_failures(self) -> int: ...

    @property
    def reopening_since(self) -> float | None:
        """time.time() since which nothing was read while the stream fails to (re)open."""
        ...

    @property
    def checkpoint(self) -> Checkpoint | None: ...

    @property
    def checkpoint_saved_at(self) -> float | None: ...


class L2View(Protocol):
    @property
    def mget_calls(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def available(self) -> bool: ...


class CacheView(Protocol):
    @property
    def stats(self) -> CacheStats: ...

    @property
    def l2(self) -> L2View | None: ...

    @property
    def repairs_pending(self) -> int: ...


class PublisherView(Protocol):
    @property
    def stats(self) -> PublishStats: ...

    @property
    def in_flight(self) -> int: ...


class EmitterView(Protocol):
    @property
    def stats(self) -> EmitStats: ...


class LaneView(Protocol):
    @property
    def stats(self) -> FanoutStats: ...

    @property
    def in_flight(self) -> int: ...


class FanoutView(Protocol):
    """This process's fan-out workers (role fanout or all)."""

    @property
    def consumers(self) -> Mapping[Lane, LaneView]: ...

    @property
    def depths(self) -> Mapping[str, int | None]: ...

    def oldest_job_ages(self) -> Mapping[Lane, float]: ...

    @property
    def connected(self) -> bool: ...

    @property
    def reconnects(self) -> int: ...


class PostsView(Protocol):
    @property
    def stats(self) -> PostStats: ...

    @property
    def emitter(self) -> EmitterView: ...

    @property
    def invalid_follower_ids(self) -> int: ...


class ProfilesView(Protocol):
    @property
    def stats(self) -> ProfileStats: ...


class RuntimeView(Protocol):
    @property
    def posts(self) -> PostsView: ...

    @property
    def profiles(self) -> ProfilesView: ...

    @property
    def cache(self) -> CacheView: ...

    @property
    def publisher(self) -> PublisherView: ...

    @property
    def fanout(self) -> FanoutView | None: ...


class WorkerView(Protocol):
    """The worker process as observability sees it."""

    @property
    def role(self) -> str:
        """ "leader", "standby" or "starting"."""
        ...

    @property
    def epoch(self) -> int: ...

    @property
    def stop(self) -> asyncio.Event: ...

    @property
    def heartbeat(self) -> float:
        """time.monotonic(), moved every second while the event loop turns."""
        ...

    @property
    def pipelines(self) -> Sequence[StreamView]: ...

    @property
    def ready_checks(self) -> Mapping[str, ReadyCheck]: ...

    @property
    def runtime(self) -> RuntimeView: ...
