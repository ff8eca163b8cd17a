"""The change feed on PyMongo's native async API (``AsyncCollection.watch``).

Events over MongoDB's 16 MB limit (``mongo.large_events``): the pipeline first projects every event
down to the fields the handlers read; where the server still finds one too large it either splits it
(``$changeStreamSplitLargeEvent``, MongoDB 7.0+ and 6.0.9+) and this cursor reassembles the
fragments, or fails the stream with BSONObjectTooLarge, which ``translate`` turns into
EventTooLarge (never retried). Under "skip" a last stage strips the documents of an oversize event
and marks it with their size, so the worker counts and dead-letters it instead of never seeing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

from bson import Timestamp
from loguru import logger
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from enrichment.errors import ConfigError, FanoutError, ServiceUnavailable, StreamFatal
from handlers.events import OVERSIZE_FIELD, ChangeEvent, Token
from worker.mongo.errors import translate

LargeEvents = Literal["split", "fail", "skip"]
SPLIT_STAGE = "$changeStreamSplitLargeEvent"
# fullDocumentBeforeChange "required" and an event without its pre-image: the server fails the stream.
NO_MATCHING_DOCUMENT = 47
# The documents an event may carry under "skip" before they are left out. The server's own limit is
# 16 MiB + 16 KiB per event; the other fields (token, ns, documentKey) take far less than 16 KiB.
SKIP_LIMIT_BYTES = 16 * 1024 * 1024


def splits_large_events(version: Sequence[int]) -> bool:
    """Whether a server of this version has ``$changeStreamSplitLargeEvent`` (7.0+, 6.0.9+)."""
    v = (*version, 0, 0, 0)[:3]
    return v >= (7, 0, 0) or (v[:2] == (6, 0) and v[2] >= 9)


def project_stage(fields: Sequence[str]) -> dict[str, Any]:
    return {"$project": dict.fromkeys(fields, 1)}


def skip_stage(limit: int = SKIP_LIMIT_BYTES) -> dict[str, Any]:
    """Leave the documents out of an event whose documents exceed ``limit``, and say so.

    ``$bsonSize`` is taken of each document (each at most 16 MB, so measuring it cannot itself fail),
    not of ``$$ROOT``: serialising an oversize event to measure it would fail like sending it.
    """
    size = {
        "$add": [
            {"$ifNull": [{"$bsonSize": "$fullDocument"}, 0]},
            {"$ifNull": [{"$bsonSize": "$updateDescription"}, 0]},
        ]
    }
    over = {"$gt": [size, limit]}
    return {
        "$set": {
            OVERSIZE_FIELD: {"$cond": [over, size, "$$REMOVE"]},
            "fullDocument": {"$cond": [over, "$$REMOVE", "$fullDocument"]},
            "updateDescription": {"$cond": [over, "$$REMOVE", "$updateDescription"]},
        }
    }


def stream_error(exc: PyMongoError, what: str, stream: str) -> FanoutError:
    """``translate``, and a missing required pre-image, which no retry brings back."""
    if isinstance(exc, OperationFailure) and exc.code == NO_MATCHING_DOCUMENT:
        return StreamFatal(
            stream,
            exc.code,
            'a pre-image required by post_lifecycle.pre_images = "required" is missing (expired, or '
            "the collection stopped recording them)",
        )
    return translate(exc, what, stream)


class MongoChangeCursor:
    def __init__(self, stream: AsyncChangeStream[dict[str, Any]], name: str) -> None:
        self._stream = stream
        self._name = name
        self._fragments: list[Mapping[str, Any]] = []
        self._before_fragments: Token | None = None

    @property
    def resume_token(self) -> Token | None:
        # Never the token of a fragment: a checkpoint must not pass an event not yet whole.
        if self._fragments:
            return self._before_fragments
        # After an empty batch, or the last event of one, this is the post-batch resume token.
        return self._stream.resume_token

    async def try_next(self) -> ChangeEvent | None:
        while True:
            before = self._stream.resume_token
            try:
                raw = await self._stream.try_next()
            except PyMongoError as exc:
                raise stream_error(exc, "change stream getMore", self._name) from exc
            if raw is None:
                if not self._stream.alive:
                    # Our $match also filters the invalidate event out, so a dropped or renamed
                    # collection shows up only as the server closing the cursor. Never idle on it.
                    raise StreamFatal(
                        self._name, None, "stream closed by the server (collection dropped or renamed)"
                    )
                return None
            if raw.get("operationType") == "invalidate":
                # The collection was dropped or renamed; the driver ends the stream after this event.
                raise StreamFatal(self._name, None, "collection dropped or renamed (invalidate event)")
            split = raw.get("splitEvent")
            if split is None and not self._fragments:
                return ChangeEvent.from_raw(self._name, raw)
            whole = self._add_fragment(raw, split, before)
            if whole is not None:
                return whole

    def _add_fragment(self, raw: Mapping[str, Any], split: Any, before: Token | None) -> ChangeEvent | None:
        """Keep a fragment; the whole event once its last fragment is in."""
        expected = len(self._fragments) + 1
        if not isinstance(split, Mapping) or split.get("fragment") != expected:
            # The server sends an event's fragments in order, and the driver resumes from the last
            # one it returned; anything else is a bug somewhere. Reopen before the first fragment.
            self._fragments = []
            raise ServiceUnavailable(f"stream {self._name}: change event fragment out of order ({split!r})")
        if expected == 1:
            self._before_fragments = before
        self._fragments.append(raw)
        if expected < int(split.get("of", 0)):
            return None
        merged: dict[str, Any] = {}
        for fragment in self._fragments:  # disjoint top-level fields, in order; the last _id wins
            merged.update(fragment)
        del merged["splitEvent"]
        count, self._fragments = len(self._fragments), []
        event = ChangeEvent.from_raw(self._name, merged)
        return ChangeEvent(event.stream, event.token, event.op, event.raw, count)


class MongoChangeFeed:
    """A ChangeFeed over one collection. ``_id`` is never projected away: it is the token."""

    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        stream: str,
        op_types: Sequence[str],
        update_lookup: bool,
        max_await_time_ms: int,
        batch_size: int,
        fields: Sequence[str] | None = None,
        large_events: LargeEvents = "split",
        before_change: str | None = None,
        match: Mapping[str, Any] | None = None,
    ) -> None:
        self.stream = stream
        self._collection = collection
        self._pipeline: list[dict[str, Any]] = [
            {"$match": {"operationType": {"$in": list(op_types)}, **(match or {})}}
        ]
        if fields is not None:
            self._pipeline.append(project_stage(fields))
        if large_events == "skip":
            self._pipeline.append(skip_stage())
        self._large_events = large_events
        self._full_document = "updateLookup" if update_lookup else None
        self._before_change = before_change  # fullDocumentBeforeChange: pre-images (6.0+)
        self._max_await = max_await_time_ms
        self._batch_size = batch_size
        self._split: bool | None = None  # whether the last open used the split stage

    async def _server_splits(self) -> bool:
        """Read once per open (a failover may land on another version): can the server split?"""
        try:
            info = await self._collection.database.command("buildInfo")
        except PyMongoError as exc:
            raise translate(exc, "buildInfo", self.stream) from exc
        version = info.get("versionArray") or [
            int(p) for p in str(info.get("version", "0")).split("-")[0].split(".") if p.isdigit()
        ]
        split = splits_large_events([int(v) for v in version])
        if split != self._split:
            self._split = split
            log = logger.bind(stream=self.stream)
            if split:
                log.info("stream {}: events over 16 MB are split and reassembled", self.stream)
            else:
                log.warning(
                    "stream {}: MongoDB {} cannot split change events over 16 MB (6.0.9+ or 7.0+ can); "
                    'one would stop the worker (exit 4) unless mongo.large_events = "skip"',
                    self.stream,
                    info.get("version", "?"),
                )
        return split

    async def check_pre_images(self) -> None:
        """At start: with pre-images ``required``, the collection must record them (MongoDB 6.0+
        ``changeStreamPreAndPostImages``), or every delete would stop the stream: raise ConfigError
        naming the collection. With ``whenAvailable`` a warning says deletes will be dead-lettered."""
        if self._before_change is None:
            return
        coll = self._collection
        try:
            found = await (await coll.database.list_collections(filter={"name": coll.name})).to_list()
        except PyMongoError as exc:
            raise translate(exc, "listCollections", self.stream) from exc
        options = found[0].get("options", {}) if found else {}
        images = options.get("changeStreamPreAndPostImages") or {}
        if images.get("enabled") is True:
            return
        where = f"{coll.database.name}.{coll.name}"
        if self._before_change == "required":
            raise ConfigError(
                f'post_lifecycle.pre_images = "required" but collection {where} does not record '
                "pre-images: enable them (collMod changeStreamPreAndPostImages: {enabled: true}, "
                'MongoDB 6.0+) or set pre_images to "when-available" or "off"'
            )
        logger.bind(stream=self.stream).warning(
            "stream {}: collection {} does not record pre-images: hard deletes cannot name their "
            "author and will be dead-lettered",
            self.stream,
            where,
        )

    @asynccontextmanager
    async def open(
        self, resume_after: Token | None, start_at: datetime | None = None
    ) -> AsyncIterator[MongoChangeCursor]:
        at = Timestamp(int(start_at.timestamp()), 0) if start_at and resume_after is None else None
        pipeline = self._pipeline
        if self._large_events == "split" and await self._server_splits():
            pipeline = [*pipeline, {SPLIT_STAGE: {}}]  # it must be the last stage
        try:
            stream = await self._collection.watch(
                pipeline,
                full_document=self._full_document,
                full_document_before_change=self._before_change,
                resume_after=resume_after,
                start_at_operation_time=at,
                max_await_time_ms=self._max_await,
                batch_size=self._batch_size,
            )
        except PyMongoError as exc:
            raise stream_error(exc, "change stream open", self.stream) from exc
        try:
            yield MongoChangeCursor(stream, self.stream)
        finally:
            # If closing fails the server reaps the cursor by itself.
            with contextlib.suppress(PyMongoError):
                await stream.close()
