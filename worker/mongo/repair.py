"""The repair tools' PyMongo adapters: posts and profiles by an indexed range, the backfills' own
checkpoints, the gaps ledger and the dead-letter archive (records ``MongoDeadLetters`` writes)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bson import Decimal128, ObjectId, json_util
from bson.errors import BSONError, InvalidId
from loguru import logger
from pymongo.errors import PyMongoError

from enrichment.errors import InvalidEvent
from enrichment.snapshot import AuthorSnapshot
from worker.mongo.errors import translate
from worker.mongo.stores import Coll
from worker.ports import Gap
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

_POST_PROJECTION = dict.fromkeys(POST_FIELDS, 1)
_PROFILE_FIELDS = {"username": 1, "display_name": 1, "avatar_url": 1, "version": 1}


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# BSON orders values by type first: number < string < object < binData < objectId < bool < date
# (then types no post _id takes). ``$gt`` compares within one type only.
_TYPE_ORDER = ("number", "string", "object", "binData", "objectId", "bool", "date")


def _type_alias(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float | Decimal128):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, bytes):
        return "binData"
    if isinstance(value, ObjectId):
        return "objectId"
    if isinstance(value, datetime):
        return "date"
    return None


def _ids_after(value: Any) -> list[dict[str, Any]]:
    """Clauses matching the ``_id``s that sort after ``value``: greater ones of its type, and every
    ``_id`` of a later type (posts sharing a ``created_at`` may hold ids of several types)."""
    alias = _type_alias(value)
    later = _TYPE_ORDER[_TYPE_ORDER.index(alias) + 1 :] if alias is not None else ()
    return [{"_id": {"$gt": value}}, *({"_id": {"$type": t}} for t in later)]


def window_filter(window: Window, after: Position | None, soft_delete_field: str = "") -> dict[str, Any]:
    """The query of a window's posts after a position, soft-deleted posts left out (fanning one out
    would bring it back to feeds with no delete after it). ``_id`` is always indexed;
    ``created_at`` needs ``{created_at: 1, _id: 1}``, which serves the filter and the sort."""
    f = window.field
    clauses: list[dict[str, Any]] = [{soft_delete_field: None}] if soft_delete_field else []
    bounds = {op: v for op, v in (("$gte", window.start), ("$lte", window.end)) if v is not None}
    if f == "_id" and after is not None:
        bounds["$gt"] = after.id
    if bounds:
        clauses.insert(0, {f: bounds})
    if after is not None and f != "_id":
        ties = [{f: after.key, **clause} for clause in _ids_after(after.id)]
        clauses.append({"$or": [{f: {"$gt": after.key}}, *ties]})
    return {"$and": clauses} if len(clauses) > 1 else (clauses[0] if clauses else {})


class MongoPostReader:
    def __init__(self, posts: Coll, soft_delete_field: str = "") -> None:
        self._posts = posts
        self._soft = soft_delete_field

    async def read_posts(self, window: Window, after: Position | None, limit: int) -> list[Doc]:
        order = [("_id", 1)] if window.field == "_id" else [(window.field, 1), ("_id", 1)]
        try:
            cursor = (
                self._posts.find(window_filter(window, after, self._soft), _POST_PROJECTION)
                .sort(order)
                .limit(limit)
            )
            return list(await cursor.to_list(limit))
        except PyMongoError as exc:
            raise translate(exc, "posts range read") from exc

    async def count_posts(self, window: Window) -> int:
        try:
            return await self._posts.count_documents(window_filter(window, None, self._soft))
        except PyMongoError as exc:
            raise translate(exc, "posts count") from exc


class MongoProfileReader:
    def __init__(self, profiles: Coll) -> None:
        self._profiles = profiles

    async def profiles_after(self, after: str | None, limit: int) -> tuple[list[AuthorSnapshot], str | None]:
        # User ids are strings: ``$gte ""`` keeps the scan to them (BSON compares within a type).
        query = {"_id": {"$gt": after} if after is not None else {"$gte": ""}}
        try:
            cursor = self._profiles.find(query, _PROFILE_FIELDS).sort("_id", 1).limit(limit)
            docs = await cursor.to_list(limit)
        except PyMongoError as exc:
            raise translate(exc, "profiles range read") from exc
        out: list[AuthorSnapshot] = []
        for doc in docs:
            try:
                out.append(AuthorSnapshot.from_profile(doc))
            except InvalidEvent as exc:
                logger.warning("malformed profile skipped: {}", exc)
        return out, (str(docs[-1]["_id"]) if docs else None)

    async def count_profiles(self) -> int:
        try:
            return await self._profiles.count_documents({"_id": {"$gte": ""}})
        except PyMongoError as exc:
            raise translate(exc, "profiles count") from exc


class MongoRunStore:
    """One document per backfill run: ``{_id: key, position: {key, id}, done, counts, updated_at}``."""

    def __init__(self, runs: Coll) -> None:
        self._runs = runs

    async def load_run(self, key: str) -> RunState | None:
        try:
            doc = await self._runs.find_one({"_id": key})
        except PyMongoError as exc:
            raise translate(exc, "backfill checkpoint load") from exc
        if doc is None:
            return None
        pos = doc.get("position")
        position = Position(pos.get("key"), pos.get("id")) if isinstance(pos, Mapping) else None
        counts = {k: int(v) for k, v in (doc.get("counts") or {}).items()}
        return RunState(key, position, bool(doc.get("done")), counts, _aware(doc.get("updated_at")))

    async def save_run(self, state: RunState) -> None:
        pos = state.position
        try:
            await self._runs.update_one(
                {"_id": state.key},
                {
                    "$set": {
                        "position": {"key": pos.key, "id": pos.id} if pos is not None else None,
                        "done": state.done,
                        "counts": dict(state.counts),
                        "updated_at": state.updated_at or datetime.now(UTC),
                    }
                },
                upsert=True,
            )
        except PyMongoError as exc:
            raise translate(exc, "backfill checkpoint save") from exc


def _object_id(text: str) -> ObjectId | None:
    try:
        return ObjectId(text)
    except (InvalidId, TypeError):
        return None


class MongoGapLedger:
    """The gaps ``MongoCheckpointStore.record_gap`` writes, with their backfill marks."""

    def __init__(self, gaps: Coll) -> None:
        self._gaps = gaps

    async def gap_records(self) -> list[GapRecord]:
        try:
            docs = [d async for d in self._gaps.find({}).sort("end", 1)]
        except PyMongoError as exc:
            raise translate(exc, "gap find") from exc
        return [
            GapRecord(
                str(d["_id"]),
                Gap(d["stream"], _aware(d.get("start")), _aware(d["end"]) or datetime.now(UTC), d["reason"]),
                _aware(d.get("backfilled_at")),
                {k: int(v) for k, v in (d.get("backfill") or {}).items()},
            )
            for d in docs
        ]

    async def mark_backfilled(self, gap_id: str, counts: Mapping[str, int]) -> None:
        try:
            await self._gaps.update_one(
                {"_id": _object_id(gap_id) or gap_id},
                {"$set": {"backfilled_at": datetime.now(UTC), "backfill": dict(counts)}},
            )
        except PyMongoError as exc:
            raise translate(exc, "gap update") from exc


def _dead_letter_query(where: DeadLetterFilter) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if where.ids:
        query["_id"] = {"$in": [_object_id(i) or i for i in where.ids]}
    if where.stream is not None:
        query["stream"] = where.stream
    if where.reason:
        query["error"] = {"$regex": re.escape(where.reason), "$options": "i"}
    at = {op: t for op, t in (("$gte", where.since), ("$lte", where.until)) if t is not None}
    if at:
        query["at"] = at
    if where.replayed is not None:
        # Records from before replays existed have no field: they were never replayed.
        query["replayed_at"] = {"$ne": None} if where.replayed else None
    return query


def _dead_letter(doc: Mapping[str, Any]) -> DeadLetter:
    raw, truncated = doc.get("event"), bool(doc.get("event_truncated"))
    event: Doc | None = None
    if isinstance(raw, str) and not truncated:
        try:
            loaded = json_util.loads(raw)
            event = loaded if isinstance(loaded, Mapping) else None
        except (ValueError, TypeError, BSONError):  # not Extended JSON we can read: unreadable
            event = None
    elif isinstance(raw, Mapping):
        event = raw
    return DeadLetter(
        str(doc["_id"]),
        str(doc.get("stream", "")),
        str(doc.get("error", "")),
        _aware(doc.get("at")),
        event,
        truncated,
        _aware(doc.get("replayed_at")),
        _count(doc.get("replays")),
    )


def _count(value: Any) -> int:
    """A stored counter, 0 when it is not a whole number (a record edited by hand)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class MongoDeadLetterArchive:
    def __init__(self, dead_letters: Coll) -> None:
        self._coll = dead_letters

    async def find(self, where: DeadLetterFilter, limit: int) -> list[DeadLetter]:
        try:
            cursor = self._coll.find(_dead_letter_query(where)).sort([("at", 1), ("_id", 1)]).limit(limit)
            return [_dead_letter(d) for d in await cursor.to_list(limit)]
        except PyMongoError as exc:
            raise translate(exc, "dead-letter find") from exc

    async def count(self, where: DeadLetterFilter) -> int:
        try:
            return await self._coll.count_documents(_dead_letter_query(where))
        except PyMongoError as exc:
            raise translate(exc, "dead-letter count") from exc

    async def mark_replayed(self, dead_letter_id: str, at: datetime) -> None:
        try:
            await self._coll.update_one(
                {"_id": _object_id(dead_letter_id) or dead_letter_id},
                {"$set": {"replayed_at": at}, "$inc": {"replays": 1}},
            )
        except PyMongoError as exc:
            raise translate(exc, "dead-letter update") from exc

    async def purge(self, where: DeadLetterFilter) -> int:
        try:
            result = await self._coll.delete_many(_dead_letter_query(where))
        except PyMongoError as exc:
            raise translate(exc, "dead-letter purge") from exc
        return result.deleted_count
