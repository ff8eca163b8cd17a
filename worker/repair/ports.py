"""The repair tools' interfaces: reading posts and profiles by an indexed range, a backfill's own
checkpoint, the recorded gaps and the dead letters. PyMongo adapters in ``worker/mongo/repair.py``,
in-memory twins in ``worker/memory/repair.py``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from enrichment.snapshot import AuthorSnapshot
from worker.ports import Gap

Doc = Mapping[str, Any]
# What a backfill reads of a post: what the live handler reads of an insert (its fullDocument).
POST_FIELDS: tuple[str, ...] = ("_id", "author_id", "text", "created_at")
WindowField = Literal["created_at", "_id"]


@dataclass(frozen=True, slots=True)
class Window:
    """Posts whose ``field`` lies between ``start`` and ``end``, both inclusive (None: open)."""

    field: WindowField
    start: Any = None
    end: Any = None


@dataclass(frozen=True, slots=True)
class Position:
    """The last post handled, as its window field's value and its ``_id`` (a keyset position)."""

    key: Any
    id: Any


class PostReader(Protocol):
    async def read_posts(self, window: Window, after: Position | None, limit: int) -> list[Doc]:
        """Up to ``limit`` posts of ``window`` after ``after``, ordered by (field, ``_id``) through an
        index; each has its ``_id``, ``author_id``, ``text`` and ``created_at`` as stored."""
        ...

    async def count_posts(self, window: Window) -> int: ...


class ProfileReader(Protocol):
    async def profiles_after(self, after: str | None, limit: int) -> tuple[list[AuthorSnapshot], str | None]:
        """Up to ``limit`` profiles with an ``_id`` above ``after``, in ``_id`` order, as snapshots
        (malformed ones skipped), and the last ``_id`` read (None when there was none)."""
        ...

    async def count_profiles(self) -> int: ...


@dataclass(slots=True)
class RunState:
    """A backfill's own checkpoint: where it is, what it did. Saved after each confirmed batch."""

    key: str
    position: Position | None = None
    done: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    updated_at: datetime | None = None


class RunStore(Protocol):
    async def load_run(self, key: str) -> RunState | None: ...

    async def save_run(self, state: RunState) -> None: ...


@dataclass(frozen=True, slots=True)
class GapRecord:
    id: str
    gap: Gap
    backfilled_at: datetime | None = None
    counts: Mapping[str, int] = field(default_factory=dict)


class GapLedger(Protocol):
    async def gap_records(self) -> list[GapRecord]: ...

    async def mark_backfilled(self, gap_id: str, counts: Mapping[str, int]) -> None: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    stream: str
    error: str
    at: datetime | None
    event: Doc | None  # None: it could not be read back (cut at the size limit, or not JSON)
    truncated: bool = False
    replayed_at: datetime | None = None
    replays: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    stream: str | None = None
    reason: str | None = None  # a substring of the error, any case
    since: datetime | None = None
    until: datetime | None = None
    replayed: bool | None = None  # None: both
    ids: tuple[str, ...] = ()  # empty: any


class DeadLetterArchive(Protocol):
    async def find(self, where: DeadLetterFilter, limit: int) -> list[DeadLetter]:
        """The matching dead letters, oldest first."""
        ...

    async def count(self, where: DeadLetterFilter) -> int: ...

    async def mark_replayed(self, dead_letter_id: str, at: datetime) -> None: ...

    async def purge(self, where: DeadLetterFilter) -> int:
        """Delete the matching dead letters; return how many."""
        ...
