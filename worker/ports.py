"""The worker room's interfaces: change feeds, checkpoints, leases and the event handlers the
pipelines drive. Handlers' own needs are in ``handlers/ports.py``, the cache's in ``enrichment/``."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from handlers.events import ChangeEvent, Token
from handlers.ports import Publisher, Report


class ChangeCursor(Protocol):
    async def try_next(self) -> ChangeEvent | None:
        """The next event, or None after waiting up to the server's max await time with none."""
        ...

    @property
    def resume_token(self) -> Token | None:
        """Where to resume to continue after everything returned so far; the post-batch token when idle."""
        ...


class ChangeFeed(Protocol):
    """One collection's change stream."""

    stream: str

    def open(
        self, resume_after: Token | None, start_at: datetime | None = None
    ) -> AbstractAsyncContextManager[ChangeCursor]:
        """Open the stream after ``resume_after``; without a token at ``start_at``, else from now."""
        ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    stream: str
    token: Token | None  # None only after an operator reset to a time: then ``start_at`` is set
    # Cluster time of the last event handled before ``token`` (None when only idle tokens were saved).
    event_time: datetime | None
    saved_at: datetime
    # The lease epoch of the writer. A save with an epoch lower than the stored one is refused.
    epoch: int = 0
    start_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of ``stream`` between ``start`` and ``end`` were never processed (resume-from-now)."""

    stream: str
    start: datetime | None  # the last checkpoint's event time, None if unknown
    end: datetime
    reason: str


class CheckpointStore(Protocol):
    async def load(self, stream: str) -> Checkpoint | None: ...

    async def save(self, checkpoint: Checkpoint) -> None:
        """Save, fenced by epoch: raise Deposed if a newer epoch has written this stream."""
        ...

    async def delete(self, stream: str) -> None:
        """Forget the checkpoint (operator reset): the stream next starts from now."""
        ...

    async def record_gap(self, gap: Gap) -> None:
        """Durably record events that were skipped, so they can be backfilled."""
        ...

    async def gaps(self) -> list[Gap]: ...


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    epoch: int  # grows by one on every takeover; fences checkpoint writes
    expires_at: datetime


class LeaseStore(Protocol):
    async def acquire(self, owner: str, ttl_seconds: float) -> Lease | None:
        """Take the lease if it is free or expired, with a new epoch. None if someone holds it."""
        ...

    async def renew(self, lease: Lease, ttl_seconds: float) -> Lease | None:
        """Extend our lease; None if it expired or was taken over."""
        ...

    async def release(self, lease: Lease) -> None: ...

    async def current(self) -> Lease | None: ...


class EventHandler(Protocol):
    async def process(self, events: Sequence[ChangeEvent], report: Report) -> None:
        """Handle a batch; call ``report(i, None | error)`` once per event as soon as it is done."""
        ...


@dataclass(slots=True)
class PublishStats:
    sent: int = 0
    confirmed: int = 0
    returned: int = 0
    nacked: int = 0
    retried: int = 0
    reconnects: int = 0
    blocked_pauses: int = 0  # connection.blocked episodes (one per block, however many publishes wait)
    blocked_seconds: float = 0.0  # time spent blocked, counted while it lasts


class ManagedPublisher(Publisher, Protocol):
    """The publisher the daemon owns: handlers' ``Publisher`` plus its lifecycle and counters."""

    stats: PublishStats

    @property
    def in_flight(self) -> int: ...

    async def connect(self) -> None: ...

    async def close(self, drain_seconds: float = 0.0) -> None: ...
