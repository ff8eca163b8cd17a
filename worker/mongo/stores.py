"""Profile source, follower graph, post store, checkpoints and dead letters on PyMongo async."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import json_util
from loguru import logger
from pymongo import ReturnDocument, UpdateMany
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from enrichment.errors import Deposed, InvalidEvent
from enrichment.snapshot import AuthorSnapshot
from worker.mongo.errors import translate
from worker.ports import Checkpoint, Gap, Lease

Coll = AsyncCollection[dict[str, Any]]
_PROFILE_FIELDS = {"username": 1, "display_name": 1, "avatar_url": 1, "version": 1}
MAX_DEAD_LETTER_EVENT_BYTES = 1_000_000


def _older_than(version: int) -> dict[str, Any]:
    """Posts whose embedded snapshot is absent or older than ``version``: the version guard."""
    return {
        "$or": [
            {"author_snapshot": {"$exists": False}},
            {"author_snapshot": None},
            {"author_snapshot.version": {"$lt": version}},
        ]
    }


class MongoProfileSource:
    def __init__(self, profiles: Coll) -> None:
        self._profiles = profiles

    async def fetch_many(self, user_ids: Sequence[str]) -> dict[str, AuthorSnapshot]:
        out: dict[str, AuthorSnapshot] = {}
        try:
            async for doc in self._profiles.find({"_id": {"$in": list(user_ids)}}, _PROFILE_FIELDS):
                try:
                    snap = AuthorSnapshot.from_profile(doc)
                except InvalidEvent as exc:
                    logger.warning("malformed profile treated as missing: {}", exc)
                    continue
                out[snap.user_id] = snap
        except PyMongoError as exc:
            raise translate(exc, "profiles find") from exc
        return out


class MongoFollowerGraph:
    """Needs the index ``{followee_id: 1, follower_id: 1}`` on ``follows``: it serves the filter and
    the sort, so followers stream in a stable order and chunk ``n`` is the same on a replay."""

    async def range_bounds(self, user_id: str, range_size: int) -> AsyncGenerator[str, None]:
        if range_size < 1:
            raise ValueError("range_size must be at least 1")
        after: str | None = None
        try:
            while (bound := await self._nth_after(user_id, after, range_size - 1)) is not None:
                # Nothing after it: it ends the last range, which stays open-ended.
                if await self._nth_after(user_id, bound, 0) is None:
                    return
                yield bound
                after = bound
        except PyMongoError as exc:
            raise translate(exc, "follows range bounds") from exc

    async def _nth_after(self, user_id: str, after: str | None, skip: int) -> str | None:
        # A covered query on {followee_id, follower_id}: the filter, sort and projection use only
        # the index, so a step walks ``skip`` index keys and reads no document. ``$gte ""`` matches
        # strings only (BSON compares within a type), the only ids a bound can be.
        bound = {"$gte": ""} if after is None else {"$gt": after}
        cursor = (
            self._follows.find({"followee_id": user_id, "follower_id": bound}, {"follower_id": 1, "_id": 0})
            .sort("follower_id", 1)
            .skip(skip)
            .limit(1)
        )
        docs = await cursor.to_list(1)
        return docs[0]["follower_id"] if docs and isinstance(docs[0].get("follower_id"), str) else None

    def __init__(self, follows: Coll, batch_size: int) -> None:
        self._follows = follows
        self._batch_size = batch_size
        self.invalid_ids = 0

    async def follower_pages(
        self, user_id: str, after: str | None = None, until: str | None = None
    ) -> AsyncGenerator[list[str], None]:
        # The sort is the port's contract (handlers dedupe adjacent repeats), not a nicety. BSON
        # orders by type first, so the strings among other types still come out in order.
        cursor = (
            self._follows.find(_range_filter(user_id, after, until), {"follower_id": 1, "_id": 0})
            .sort("follower_id", 1)
            .batch_size(self._batch_size)
        )
        skipped = 0
        example = ""
        try:
            while docs := await cursor.to_list(self._batch_size):
                page = [f for doc in docs if isinstance(f := doc.get("follower_id"), str)]
                if len(page) < len(docs):
                    # Recipients are user ids, which are strings (profiles._id): a 42 or an ObjectId
                    # names no user. Converting would invent one ("42"), so skip, but never silently.
                    skipped += len(docs) - len(page)
                    example = example or next(
                        type(f).__name__ for d in docs if not isinstance(f := d.get("follower_id"), str)
                    )
                if page:
                    yield page
        except PyMongoError as exc:
            raise translate(exc, "follows find") from exc
        finally:
            await cursor.close()
            if skipped:
                self.invalid_ids += skipped
                logger.warning(
                    "followers of {}: skipped {} follow edge(s) whose follower_id is not a string (e.g. {})",
                    user_id,
                    skipped,
                    example,
                )


def _range_filter(user_id: str, after: str | None, until: str | None) -> dict[str, Any]:
    bounds = {op: v for op, v in (("$gt", after), ("$lte", until)) if v is not None}
    return {"followee_id": user_id, "follower_id": bounds} if bounds else {"followee_id": user_id}


class MongoPostStore:
    """Needs ``{author_id: 1}`` on ``posts`` for the cascade's ``update_many``."""

    def __init__(self, posts: Coll) -> None:
        self._posts = posts

    async def set_snapshots(self, items: Sequence[tuple[Any, AuthorSnapshot]]) -> int:
        by_author: dict[str, tuple[AuthorSnapshot, list[Any]]] = {}
        for post_id, snap in items:
            by_author.setdefault(snap.user_id, (snap, []))[1].append(post_id)
        # One round trip for the batch: one guarded UpdateMany per distinct author.
        ops = [
            UpdateMany(
                {"_id": {"$in": ids}, "author_id": snap.user_id, **_older_than(snap.version)},
                {"$set": {"author_snapshot": snap.to_dict()}},
            )
            for snap, ids in by_author.values()
        ]
        try:
            result = await self._posts.bulk_write(ops, ordered=False)
        except PyMongoError as exc:
            raise translate(exc, "posts snapshot write") from exc
        return result.modified_count

    async def rewrite_author_snapshot(self, snapshot: AuthorSnapshot) -> int:
        try:
            result = await self._posts.update_many(
                {"author_id": snapshot.user_id, **_older_than(snapshot.version)},
                {"$set": {"author_snapshot": snapshot.to_dict()}},
            )
        except PyMongoError as exc:
            raise translate(exc, "posts snapshot rewrite") from exc
        return result.modified_count


class MongoCheckpointStore:
    """One document per stream in a collection the worker owns; gaps in a second one."""

    def __init__(self, checkpoints: Coll, gaps: Coll) -> None:
        self._coll = checkpoints
        self._gaps = gaps

    async def load(self, stream: str) -> Checkpoint | None:
        try:
            doc = await self._coll.find_one({"_id": stream})
        except PyMongoError as exc:
            raise translate(exc, "checkpoint load") from exc
        if doc is None:
            return None
        token = doc.get("token") if isinstance(doc.get("token"), Mapping) else None
        start_at = _aware(doc.get("start_at"))
        if token is None and start_at is None:
            return None
        saved_at = _aware(doc.get("saved_at")) or datetime.now(UTC)
        return Checkpoint(
            stream, token, _aware(doc.get("event_time")), saved_at, int(doc.get("epoch", 0)), start_at
        )

    async def save(self, checkpoint: Checkpoint) -> None:
        try:
            # Fenced: matches only a document written by this epoch or an older one. When a newer
            # epoch owns it, the upsert collides with the existing _id and nothing is written.
            await self._coll.update_one(
                {
                    "_id": checkpoint.stream,
                    # A document from before epochs existed has none: it may be overwritten.
                    "$or": [{"epoch": {"$lte": checkpoint.epoch}}, {"epoch": {"$exists": False}}],
                },
                {
                    "$set": {
                        "token": dict(checkpoint.token) if checkpoint.token is not None else None,
                        "start_at": checkpoint.start_at,
                        "event_time": checkpoint.event_time,
                        "saved_at": checkpoint.saved_at,
                        "epoch": checkpoint.epoch,
                    }
                },
                upsert=True,
            )
        except DuplicateKeyError as exc:
            raise Deposed(f"checkpoint of {checkpoint.stream} is held by a newer epoch") from exc
        except PyMongoError as exc:
            raise translate(exc, "checkpoint save") from exc

    async def delete(self, stream: str) -> None:
        try:
            await self._coll.delete_one({"_id": stream})
        except PyMongoError as exc:
            raise translate(exc, "checkpoint delete") from exc

    async def record_gap(self, gap: Gap) -> None:
        try:
            await self._gaps.insert_one(
                {"stream": gap.stream, "start": gap.start, "end": gap.end, "reason": gap.reason}
            )
        except PyMongoError as exc:
            raise translate(exc, "gap insert") from exc

    async def gaps(self) -> list[Gap]:
        try:
            docs = [d async for d in self._gaps.find({}).sort("end", 1)]
        except PyMongoError as exc:
            raise translate(exc, "gap find") from exc
        return [
            Gap(d["stream"], _aware(d.get("start")), _aware(d["end"]) or datetime.now(UTC), d["reason"])
            for d in docs
        ]


class MongoLeaseStore:
    """The leader lease: one document ``{_id: name, owner, epoch, expires_at}``.

    Expiry uses the workers' clocks: keep them in sync (NTP) well within the lease TTL.
    """

    def __init__(self, leases: Coll, name: str) -> None:
        self._coll = leases
        self._name = name

    async def acquire(self, owner: str, ttl_seconds: float) -> Lease | None:
        now = datetime.now(UTC)
        try:
            doc = await self._coll.find_one_and_update(
                {"_id": self._name, "$or": [{"expires_at": {"$lte": now}}, {"owner": owner}]},
                {
                    "$set": {"owner": owner, "expires_at": now + timedelta(seconds=ttl_seconds)},
                    "$inc": {"epoch": 1},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return None  # held by someone else: the filter missed and the upsert collided
        except PyMongoError as exc:
            raise translate(exc, "lease acquire") from exc
        return _lease(doc) if doc is not None else None

    async def renew(self, lease: Lease, ttl_seconds: float) -> Lease | None:
        now = datetime.now(UTC)
        try:
            doc = await self._coll.find_one_and_update(
                {"_id": self._name, "owner": lease.owner, "epoch": lease.epoch, "expires_at": {"$gt": now}},
                {"$set": {"expires_at": now + timedelta(seconds=ttl_seconds)}},
                return_document=ReturnDocument.AFTER,
            )
        except PyMongoError as exc:
            raise translate(exc, "lease renew") from exc
        return _lease(doc) if doc is not None else None

    async def release(self, lease: Lease) -> None:
        try:
            await self._coll.update_one(
                {"_id": self._name, "owner": lease.owner, "epoch": lease.epoch},
                {"$set": {"expires_at": datetime.now(UTC)}},
            )
        except PyMongoError as exc:
            raise translate(exc, "lease release") from exc

    async def current(self) -> Lease | None:
        try:
            doc = await self._coll.find_one({"_id": self._name})
        except PyMongoError as exc:
            raise translate(exc, "lease read") from exc
        return _lease(doc) if doc is not None else None


def _lease(doc: Mapping[str, Any]) -> Lease:
    return Lease(str(doc["owner"]), int(doc["epoch"]), _aware(doc["expires_at"]) or datetime.now(UTC))


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class MongoDeadLetters:
    def __init__(self, dead_letters: Coll) -> None:
        self._coll = dead_letters

    async def put(self, stream: str, token: Any, raw: Any, error: str) -> None:
        # Extended JSON: any event can be stored, whatever its field names; absurd ones are cut.
        event = json_util.dumps(raw)
        truncated = len(event) > MAX_DEAD_LETTER_EVENT_BYTES
        try:
            await self._coll.insert_one(
                {
                    "stream": stream,
                    "token": json_util.dumps(token),
                    "error": error,
                    "event": event[:MAX_DEAD_LETTER_EVENT_BYTES],
                    "event_truncated": truncated,
                    "at": datetime.now(UTC),
                }
            )
        except PyMongoError as exc:
            raise translate(exc, "dead-letter insert") from exc
