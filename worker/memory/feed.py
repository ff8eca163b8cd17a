"""In-memory change feed over MemoryDatabase: behaves like a MongoDB change stream. NOT MongoDB."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from enrichment.errors import ConfigError, StreamFatal
from handlers.events import ChangeEvent, Token
from worker.memory.db import MemoryDatabase, token_seq
from worker.ports import ChangeFeed
from worker.settings import Settings
from worker.streams import STREAMS


class MemoryChangeCursor:
    def __init__(
        self,
        db: MemoryDatabase,
        stream: str,
        collection: str,
        op_types: frozenset[str],
        update_lookup: bool,
        start: int,
        max_await_seconds: float,
        fields: Sequence[str] | None = None,
        before_change: str | None = None,
        match: Mapping[str, Any] | None = None,
    ) -> None:
        self._db = db
        self._before_change = before_change
        self._match = match or {}
        self._stream = stream
        self._collection = collection
        self._ops = op_types
        self._lookup = update_lookup
        self._pos = start
        self._await = max_await_seconds
        self._token: Token | None = None
        self._fields = fields
        self.getmores = 0

    @property
    def resume_token(self) -> Token | None:
        return self._token

    async def try_next(self) -> ChangeEvent | None:
        event = self._next_matching()
        if event is None:
            self.getmores += 1
            await self._db.wait_for_change(self._await)
            event = self._next_matching()
        if event is None:
            # Like the server's postBatchResumeToken: the log position reached, matching or not.
            self._pos = max(self._pos, self._db.position)
            self._token = self._db.last_token
            return None
        self._token = event["_id"]
        return ChangeEvent.from_raw(self._stream, event)

    def _next_matching(self) -> dict[str, Any] | None:
        while True:
            batch = self._db.events_after(self._stream, self._pos, 256)
            if not batch:
                return None
            for pos, event in batch:
                self._pos = pos
                if event["ns"]["coll"] != self._collection or event["operationType"] not in self._ops:
                    continue
                if not matches(event, self._match):
                    continue
                return self._render(pos, event)

    def _render(self, pos: int, event: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(event)
        op = event["operationType"]
        if self._lookup and op == "update":
            current = self._db.collection(self._collection).get(event["documentKey"]["_id"])
            out["fullDocument"] = copy.deepcopy(current)
        if self._before_change is not None and op in ("update", "replace", "delete"):
            # Like MongoDB 6.0+: the pre-image when the collection recorded one; "required" fails
            # the stream without it (the server's error 47, which the MongoDB feed makes this).
            before = self._db.pre_images.get(pos)
            if before is None and self._before_change == "required":
                self._pos = pos - 1  # met again on the next read, as on a server
                raise StreamFatal(self._stream, 47, "a required pre-image is missing")
            out["fullDocumentBeforeChange"] = copy.deepcopy(before)
        return out if self._fields is None else project(out, self._fields)


def matches(doc: Mapping[str, Any], conditions: Mapping[str, Any]) -> bool:
    """The feeds' extra ``$match`` conditions, of the forms they use: ``{path: {"$exists": bool}}``
    and ``{path: value}`` on dotted paths through documents."""
    for path, condition in conditions.items():
        value: Any = doc
        for part in path.split("."):
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if isinstance(condition, Mapping) and set(condition) == {"$exists"}:
            if (value is not _MISSING) != bool(condition["$exists"]):
                return False
        elif isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition):
            raise ValueError(f"the in-memory feed cannot match {condition!r}")
        elif value != condition:
            return False
    return True


_MISSING = object()


def project(doc: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """An inclusion ``$project`` of dotted paths, like the MongoDB feed's (through documents only)."""
    out: dict[str, Any] = {}
    for path in fields:
        *parents, leaf = path.split(".")
        src: Any = doc
        dst = out
        for part in parents:
            src = src.get(part) if isinstance(src, Mapping) else None
            if not isinstance(src, Mapping):
                break
            dst = dst.setdefault(part, {})
        else:
            if isinstance(src, Mapping) and leaf in src:
                dst[leaf] = src[leaf]
    return out


class MemoryChangeFeed:
    """A ChangeFeed on one collection of a MemoryDatabase."""

    def __init__(
        self,
        db: MemoryDatabase,
        stream: str,
        collection: str,
        op_types: frozenset[str],
        update_lookup: bool = False,
        max_await_seconds: float = 0.2,
        fields: Sequence[str] | None = None,
        before_change: str | None = None,
        match: Mapping[str, Any] | None = None,
    ) -> None:
        self.stream = stream
        self._before_change = before_change
        self._match = match
        self._fields = fields  # the fields handlers read: projected like the MongoDB feed does
        self._db = db
        self._collection = collection
        self._ops = op_types
        self._lookup = update_lookup
        self._await = max_await_seconds
        self.opened_with: list[Token | None] = []

    @asynccontextmanager
    async def open(
        self, resume_after: Token | None, start_at: datetime | None = None
    ) -> AsyncIterator[MemoryChangeCursor]:
        self.opened_with.append(resume_after)
        if resume_after is None and start_at is not None:
            start = self._db.position_at(start_at)
        elif resume_after is None:
            start = self._db.position
        else:
            seq = token_seq(resume_after)
            if seq is None:
                raise StreamFatal(self.stream, 280, "resume token was not issued by this database")
            start = seq
        yield MemoryChangeCursor(
            self._db,
            self.stream,
            self._collection,
            self._ops,
            self._lookup,
            start,
            self._await,
            self._fields,
            self._before_change,
            self._match,
        )

    async def check_pre_images(self) -> None:
        """Like the MongoDB feed's: "required" on a collection without pre-images is a ConfigError."""
        if self._before_change == "required" and self._collection not in self._db.pre_image_collections:
            raise ConfigError(
                f'post_lifecycle.pre_images = "required" but collection {self._db.name}.'
                f"{self._collection} does not record pre-images"
            )


def memory_feeds(
    db: MemoryDatabase, max_await_seconds: float = 0.2, settings: Settings | None = None
) -> dict[str, ChangeFeed]:
    """Every stream of the table over the in-memory MongoDB stand-in (demo, benchmarks, tests),
    watching what ``build_runtime``'s feeds do under ``settings`` (the defaults if None). NOT MongoDB."""
    settings = settings or Settings()
    feeds: dict[str, ChangeFeed] = {}
    for spec in STREAMS:
        watch = spec.watch(settings)
        feeds[spec.name] = MemoryChangeFeed(
            db,
            spec.name,
            spec.collection(settings.mongo),
            frozenset(watch.ops),
            watch.update_lookup,
            max_await_seconds,
            watch.fields,
            watch.before_change,
            watch.match,
        )
    return feeds
