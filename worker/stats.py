"""The small stats interface observability reads: ``/healthz``, ``/readyz``, ``/metrics``, the
systemd watchdog and status line, and the summary log line.

The pipeline, the cache, the publisher and the handlers expose these fields; observability reads
them directly, never private attributes and never with ``getattr`` defaults, so mypy checks both
sides. Tests pass any object with these fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from enrichment.cache import CacheStats
from handlers.emitter import EmitStats
from handlers.jobs import Lane
from handlers.posts import PostStats
from handlers.profiles import ProfileStats
from worker.fanout.consumer import FanoutStats
from worker.ports import Checkpoint, PublishStats
from worker.tailer.eventlog import StreamStats

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
    def depths(self) -> Mapping[Lane, int | None]: ...

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
