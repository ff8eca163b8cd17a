"""An in-memory stand-in for one MongoDB database with a change log. NOT MongoDB.

It powers ``fanout-worker demo``, the benchmarks and unit tests. It keeps documents per collection
and appends one change event per write, like an oplog: ordered, with opaque resume tokens,
``fullDocument`` on inserts and replaces, ``updateDescription`` on updates and ``clusterTime``.
The log can be capped to emulate an oplog window; resuming from a trimmed token fails like
MongoDB's error 286. There are no queries, indexes, transactions or durability across processes.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

from bson import Timestamp

from enrichment.backoff import wait_event
from enrichment.errors import StreamFatal

Doc = dict[str, Any]


def _token(seq: int) -> dict[str, str]:
    return {"_data": f"82{seq:016X}"}


def token_seq(token: Any) -> int | None:
    """The log position of a token this database issued, or None if it is not one of ours."""
    data = token.get("_data") if isinstance(token, dict) else None
    if not isinstance(data, str) or not data.startswith("82"):
        return None
    try:
        return int(data[2:], 16)
    except ValueError:
        return None


class MemoryDatabase:
    def __init__(self, name: str = "social", max_log: int | None = None) -> None:
        self.name = name
        self.collections: dict[str, dict[Any, Doc]] = {}
        # The log holds positions first_seq .. _seq contiguously, so a position is a list index.
        self._log: list[tuple[int, Doc]] = []
        self._first_seq = 1
        self._max_log = max_log
        self._seq = 0
        self._changed: asyncio.Event | None = None
        self.deletes = 0  # lets readers that index by insertion order know when to rebuild
        # Collections recording pre-images (MongoDB's changeStreamPreAndPostImages), and the
        # pre-images recorded, by log position.
        self.pre_image_collections: set[str] = set()
        self.pre_images: dict[int, Doc] = {}

    def collection(self, name: str) -> dict[Any, Doc]:
        return self.collections.setdefault(name, {})

    # --- writes: each one appends to the change log -------------------------------------

    def insert(self, coll: str, doc: Doc) -> None:
        docs = self.collection(coll)
        if doc["_id"] in docs:
            raise KeyError(f"duplicate key {doc['_id']!r} in {coll}")
        docs[doc["_id"]] = copy.deepcopy(doc)
        self._append(coll, "insert", doc["_id"], fullDocument=copy.deepcopy(doc))

    def update(self, coll: str, doc_id: Any, set_fields: Doc) -> bool:
        doc = self.collection(coll).get(doc_id)
        if doc is None:
            return False
        before = self._pre_image(coll, doc)
        doc.update(copy.deepcopy(set_fields))
        desc = {"updatedFields": copy.deepcopy(set_fields), "removedFields": [], "truncatedArrays": []}
        self._append(coll, "update", doc_id, before, updateDescription=desc)
        return True

    def replace(self, coll: str, doc: Doc) -> None:
        before = self._pre_image(coll, self.collection(coll).get(doc["_id"]))
        self.collection(coll)[doc["_id"]] = copy.deepcopy(doc)
        self._append(coll, "replace", doc["_id"], before, fullDocument=copy.deepcopy(doc))

    def delete(self, coll: str, doc_id: Any) -> None:
        if (gone := self.collection(coll).pop(doc_id, None)) is not None:
            self.deletes += 1
            self._append(coll, "delete", doc_id, self._pre_image(coll, gone))

    def _pre_image(self, coll: str, doc: Doc | None) -> Doc | None:
        return copy.deepcopy(doc) if doc is not None and coll in self.pre_image_collections else None

    def _append(self, coll: str, op: str, doc_id: Any, before: Doc | None = None, **extra: Any) -> None:
        self._seq += 1
        if before is not None:
            self.pre_images[self._seq] = before
        now = datetime.now(UTC)
        event: Doc = {
            "_id": _token(self._seq),
            "operationType": op,
            "clusterTime": Timestamp(now, self._seq % 2**31),
            "wallTime": now,
            "ns": {"db": self.name, "coll": coll},
            "documentKey": {"_id": doc_id},
            **extra,
        }
        self._log.append((self._seq, event))
        if self._max_log is not None and len(self._log) > self._max_log:
            drop = len(self._log) - self._max_log
            del self._log[:drop]
            self._first_seq += drop
            for seq in [s for s in self.pre_images if s < self._first_seq] if self.pre_images else []:
                del self.pre_images[seq]
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # --- reads for the change feed ------------------------------------------------------

    @property
    def last_token(self) -> dict[str, str]:
        return _token(self._seq)

    def events_after(self, stream: str, seq: int, limit: int) -> list[tuple[int, Doc]]:
        """Up to ``limit`` logged events with a position above ``seq``; raise if ``seq`` is trimmed."""
        if seq < self._first_seq - 1:
            raise StreamFatal(stream, 286, "resume point is no longer in the change log (history lost)")
        start = seq + 1 - self._first_seq
        return self._log[start : start + limit]

    def log(self) -> list[tuple[int, Doc]]:
        """Every event still in the log, oldest first (tests and the demo read it)."""
        return list(self._log)

    def position_at(self, moment: datetime) -> int:
        """The log position just before the first event at or after ``moment``."""
        for pos, event in self._log:
            if event["wallTime"] >= moment:
                return pos - 1
        return self._seq

    @property
    def position(self) -> int:
        return self._seq

    async def wait_for_change(self, max_wait: float) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await wait_event(self._changed, max_wait)
