"""In-memory twins of the repair tools' adapters (worker/mongo/repair.py), for unit tests and the
demo. NOT MongoDB: ranges are filtered and sorted in Python, with BSON's order of types roughly
kept (numbers, then strings, then ObjectIds)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bson import ObjectId

from enrichment.errors import InvalidEvent
from enrichment.snapshot import AuthorSnapshot
from worker.memory.db import MemoryDatabase
from worker.memory.stores import MemoryCheckpointStore, MemoryDeadLetters
from worker.repair.ports import (
    POST_FIELDS,
    DeadLetter,
    DeadLetterFilter,
    Doc,
    GapRecord,
    Position,
    RunState,
    Window,
)


def _rank(value: Any) -> tuple[int, Any]:
    """A sort key across types, in BSON's order for the types ids and times take."""
    if isinstance(value, bool):
        return (8, value)
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, ObjectId):
        return (7, value)
    if isinstance(value, datetime):
        return (9, value)
    return (10, repr(value))


class MemoryPostReader:
    def __init__(self, db: MemoryDatabase, collection: str = "posts", soft_delete_field: str = "") -> None:
        self._db = db
        self._collection = collection
        self._soft = soft_delete_field  # soft-deleted posts are left out, as MongoPostReader does

    def _in_window(self, window: Window) -> list[tuple[tuple[Any, ...], Doc]]:
        rows: list[tuple[tuple[Any, ...], Doc]] = []
        for doc in self._db.collection(self._collection).values():
            value = doc.get(window.field)
            if value is None or (self._soft and doc.get(self._soft) is not None):
                continue
            key = _rank(value)
            # Like a BSON range: a bound matches values of its own type only.
            low = _rank(window.start) if window.start is not None else None
            high = _rank(window.end) if window.end is not None else None
            if low is not None and not (key[0] == low[0] and key >= low):
                continue
            if high is not None and not (key[0] == high[0] and key <= high):
                continue
            rows.append(((key, _rank(doc["_id"])), doc))
        rows.sort(key=lambda row: row[0])
        return rows

    async def read_posts(self, window: Window, after: Position | None, limit: int) -> list[Doc]:
        rows = self._in_window(window)
        if after is not None:
            mark = (_rank(after.key), _rank(after.id))
            rows = [row for row in rows if row[0] > mark]
        return [{k: copy.deepcopy(doc[k]) for k in POST_FIELDS if k in doc} for _, doc in rows[:limit]]

    async def count_posts(self, window: Window) -> int:
        return len(self._in_window(window))


class MemoryProfileReader:
    def __init__(self, db: MemoryDatabase, collection: str = "profiles") -> None:
        self._db = db
        self._collection = collection

    async def profiles_after(self, after: str | None, limit: int) -> tuple[list[AuthorSnapshot], str | None]:
        ids = sorted(i for i in self._db.collection(self._collection) if isinstance(i, str))
        page = [i for i in ids if after is None or i > after][:limit]
        out = []
        for user_id in page:
            try:
                out.append(AuthorSnapshot.from_profile(self._db.collection(self._collection)[user_id]))
            except InvalidEvent:
                continue
        return out, (page[-1] if page else None)

    async def count_profiles(self) -> int:
        return sum(isinstance(i, str) for i in self._db.collection(self._collection))


class MemoryRunStore:
    def __init__(self) -> None:
        self.runs: dict[str, RunState] = {}
        self.saves = 0

    async def load_run(self, key: str) -> RunState | None:
        state = self.runs.get(key)
        return copy.deepcopy(state) if state is not None else None

    async def save_run(self, state: RunState) -> None:
        self.saves += 1
        self.runs[state.key] = copy.deepcopy(state)


class MemoryGapLedger:
    """The gaps a MemoryCheckpointStore recorded; a gap's id is its position in the list."""

    def __init__(self, checkpoints: MemoryCheckpointStore) -> None:
        self._checkpoints = checkpoints
        self.marks: dict[str, tuple[datetime, dict[str, int]]] = {}

    async def gap_records(self) -> list[GapRecord]:
        out = []
        for i, gap in enumerate(self._checkpoints.recorded_gaps):
            at, counts = self.marks.get(str(i), (None, {}))
            out.append(GapRecord(str(i), gap, at, counts))
        return out

    async def mark_backfilled(self, gap_id: str, counts: Mapping[str, int]) -> None:
        self.marks[gap_id] = (datetime.now().astimezone(), dict(counts))


class MemoryDeadLetterArchive:
    """The dead letters a MemoryDeadLetters holds; a dead letter's id is its position."""

    def __init__(self, dead_letters: MemoryDeadLetters) -> None:
        self._items = dead_letters.items

    def _matching(self, where: DeadLetterFilter) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for i, item in enumerate(self._items):
            if item.get("purged"):
                continue
            at = item.get("at")
            if (
                (where.ids and str(i) not in where.ids)
                or (where.stream is not None and item["stream"] != where.stream)
                or (where.reason and where.reason.lower() not in str(item["error"]).lower())
                or (where.since is not None and (at is None or at < where.since))
                or (where.until is not None and (at is None or at > where.until))
                or (where.replayed is not None and (item.get("replayed_at") is not None) != where.replayed)
            ):
                continue
            out.append((str(i), item))
        return out

    async def find(self, where: DeadLetterFilter, limit: int) -> list[DeadLetter]:
        return [
            DeadLetter(
                i,
                item["stream"],
                str(item["error"]),
                item.get("at"),
                item["event"] if isinstance(item.get("event"), Mapping) else None,
                False,
                item.get("replayed_at"),
                int(item.get("replays", 0)),
            )
            for i, item in self._matching(where)[:limit]
        ]

    async def count(self, where: DeadLetterFilter) -> int:
        return len(self._matching(where))

    async def mark_replayed(self, dead_letter_id: str, at: datetime) -> None:
        item = self._items[int(dead_letter_id)]
        item["replayed_at"] = at
        item["replays"] = int(item.get("replays", 0)) + 1

    async def purge(self, where: DeadLetterFilter) -> int:
        # Marked, not removed: the ids of the others are positions and must stay.
        matching = self._matching(where)
        for _, item in matching:
            item["purged"] = True
        return len(matching)
