"""The change feed on PyMongo's native async API (``AsyncCollection.watch``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from bson import Timestamp
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from enrichment.errors import StreamFatal
from handlers.events import ChangeEvent, Token
from worker.adapters.mongo_errors import translate


class MongoChangeCursor:
    def __init__(self, stream: AsyncChangeStream[dict[str, Any]], name: str) -> None:
        self._stream = stream
        self._name = name

    @property
    def resume_token(self) -> Token | None:
        # After an empty batch, or the last event of one, this is the post-batch resume token.
        return self._stream.resume_token

    async def try_next(self) -> ChangeEvent | None:
        try:
            raw = await self._stream.try_next()
        except PyMongoError as exc:
            raise translate(exc, "change stream getMore", self._name) from exc
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
        return ChangeEvent.from_raw(self._name, raw)


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
    ) -> None:
        self.stream = stream
        self._collection = collection
        self._pipeline = [{"$match": {"operationType": {"$in": list(op_types)}}}]
        self._full_document = "updateLookup" if update_lookup else None
        self._max_await = max_await_time_ms
        self._batch_size = batch_size

    @asynccontextmanager
    async def open(
        self, resume_after: Token | None, start_at: datetime | None = None
    ) -> AsyncIterator[MongoChangeCursor]:
        at = Timestamp(int(start_at.timestamp()), 0) if start_at and resume_after is None else None
        try:
            stream = await self._collection.watch(
                self._pipeline,
                full_document=self._full_document,
                resume_after=resume_after,
                start_at_operation_time=at,
                max_await_time_ms=self._max_await,
                batch_size=self._batch_size,
            )
        except PyMongoError as exc:
            raise translate(exc, "change stream open", self.stream) from exc
        try:
            yield MongoChangeCursor(stream, self.stream)
        finally:
            # If closing fails the server reaps the cursor by itself.
            with contextlib.suppress(PyMongoError):
                await stream.close()
