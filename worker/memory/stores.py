"""In-memory profile source, follower graph, post store, checkpoint and dead-letter stores.

Stand-ins for the demo, benchmarks and unit tests. NOT MongoDB.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger

from enrichment.errors import Deposed, InvalidEvent
from enrichment.snapshot import AuthorSnapshot
from worker.memory.db import MemoryDatabase
from worker.ports import Checkpoint, Gap, Lease


class MemoryProfileSource:
    def __init__(self, db: MemoryDatabase, collection: str = "profiles") -> None:
        self._db = db
        self._collection = collection
        self.queries = 0
        self.ids_requested = 0

    async def fetch_many(self, user_ids: Sequence[str]) -> dict[str, AuthorSnapshot]:
        self.queries += 1
        self.ids_requested += len(user_ids)
        docs = self._db.collection(self._collection)
        out: dict[str, AuthorSnapshot] = {}
        for user_id in user_ids:
            doc = docs.get(user_id)
            if doc is None:
                continue
            try:
                out[user_id] = AuthorSnapshot.from_profile(doc)
            except InvalidEvent as exc:
                logger.warning("profile {} is malformed, treated as missing: {}", user_id, exc)
        return out


class MemoryFollowerGraph:
    """Followers per followee, kept sorted so the stream order is deterministic, like the index.

    Like a ``follows`` collection without a unique index, it keeps duplicate edges: the handler,
    not the store, guarantees each recipient once.
    """

    def __init__(self, page_size: int = 1_000) -> None:
        self._followers: dict[str, list[str]] = {}
        self._page = page_size
        self.invalid_ids = 0  # it holds only strings; here to match the port

    def add(self, follower_id: str, followee_id: str) -> None:
        bisect.insort(self._followers.setdefault(followee_id, []), follower_id)

    def set_followers(self, followee_id: str, follower_ids: list[str]) -> None:
        """Bulk load the edges as given (repeats are kept, as the collection would); sorts in place."""
        follower_ids.sort()
        self._followers[followee_id] = follower_ids

    def count(self, followee_id: str) -> int:
        return len(self._followers.get(followee_id, ()))

    async def follower_pages(
        self, user_id: str, after: str | None = None, until: str | None = None
    ) -> AsyncGenerator[list[str], None]:
        followers = self._followers.get(user_id, [])
        lo = 0 if after is None else bisect.bisect_right(followers, after)
        hi = len(followers) if until is None else bisect.bisect_right(followers, until)
        for start in range(lo, hi, self._page):
            # Yield to the loop between pages, like a cursor's getMore would.
            await asyncio.sleep(0)
            yield followers[start : min(start + self._page, hi)]

    async def range_bounds(self, user_id: str, range_size: int) -> AsyncGenerator[str, None]:
        if range_size < 1:
            raise ValueError("range_size must be at least 1")
        followers = self._followers.get(user_id, [])
        end = range_size - 1  # position of the current range's last edge
        while end < len(followers) - 1:
            bound = followers[end]
            # Repeated edges of one id share a range: the next one starts after the last copy.
            nxt = bisect.bisect_right(followers, bound)
            if nxt >= len(followers):
                return
            await asyncio.sleep(0)
            yield bound
            end = nxt + range_size - 1


def _newer(stored: Any, version: int) -> bool:
    return not isinstance(stored, dict) or int(stored.get("version", -1)) < version


class MemoryPostStore:
    def __init__(self, db: MemoryDatabase, collection: str = "posts") -> None:
        self._db = db
        self._collection = collection
        self.update_calls = 0
        # author → post ids, extended as posts arrive (the collection dict keeps insertion order).
        self._by_author: dict[str, list[Any]] = {}
        self._indexed = 0
        self._deletes_seen = 0

    def _posts_of(self, author_id: str) -> list[Any]:
        docs = self._db.collection(self._collection)
        if self._db.deletes != self._deletes_seen:  # positions shifted: start the index over
            self._by_author, self._indexed, self._deletes_seen = {}, 0, self._db.deletes
        if len(docs) > self._indexed:
            for post_id, doc in list(docs.items())[self._indexed :]:
                self._by_author.setdefault(str(doc.get("author_id")), []).append(post_id)
            self._indexed = len(docs)
        return self._by_author.get(author_id, [])

    async def set_snapshots(self, items: Sequence[tuple[Any, AuthorSnapshot]]) -> int:
        self.update_calls += len({snap.user_id for _, snap in items})
        changed = 0
        for post_id, snap in items:
            doc = self._db.collection(self._collection).get(post_id)
            if (
                doc is not None
                and doc.get("author_id") == snap.user_id
                and _newer(doc.get("author_snapshot"), snap.version)
            ):
                self._db.update(self._collection, post_id, {"author_snapshot": snap.to_dict()})
                changed += 1
        return changed

    async def rewrite_author_snapshot(self, snapshot: AuthorSnapshot) -> int:
        self.update_calls += 1
        changed = 0
        docs = self._db.collection(self._collection)
        for n, post_id in enumerate(self._posts_of(snapshot.user_id)):
            if n % 20 == 0:
                # MongoDB does this work server-side while the worker's loop is free: yield, so a
                # storm of cascades does not hold the loop (and other batches' invalidations).
                await asyncio.sleep(0)
            doc = docs.get(post_id)
            if (
                doc is not None
                and doc.get("author_id") == snapshot.user_id
                and _newer(doc.get("author_snapshot"), snapshot.version)
            ):
                self._db.update(self._collection, post_id, {"author_snapshot": snapshot.to_dict()})
                changed += 1
        return changed


class MemoryCheckpointStore:
    """Checkpoints, gaps and the lease in one process; several workers may share one instance."""

    def __init__(self) -> None:
        self.saved: dict[str, Checkpoint] = {}
        self.recorded_gaps: list[Gap] = []
        self.saves = 0
        self.fenced = 0

    async def load(self, stream: str) -> Checkpoint | None:
        return self.saved.get(stream)

    async def save(self, checkpoint: Checkpoint) -> None:
        current = self.saved.get(checkpoint.stream)
        if current is not None and current.epoch > checkpoint.epoch:
            self.fenced += 1
            raise Deposed(f"checkpoint of {checkpoint.stream} is held by epoch {current.epoch}")
        self.saves += 1
        self.saved[checkpoint.stream] = checkpoint

    async def delete(self, stream: str) -> None:
        self.saved.pop(stream, None)

    async def record_gap(self, gap: Gap) -> None:
        self.recorded_gaps.append(gap)

    async def gaps(self) -> list[Gap]:
        return list(self.recorded_gaps)


class MemoryLeaseStore:
    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self.lease: Lease | None = None
        self._epoch = 0

    async def acquire(self, owner: str, ttl_seconds: float) -> Lease | None:
        now = self._clock()
        if self.lease is not None and self.lease.expires_at > now and self.lease.owner != owner:
            return None
        self._epoch += 1
        self.lease = Lease(owner, self._epoch, now + timedelta(seconds=ttl_seconds))
        return self.lease

    async def renew(self, lease: Lease, ttl_seconds: float) -> Lease | None:
        now = self._clock()
        held = self.lease
        if held is None or held.epoch != lease.epoch or held.owner != lease.owner or held.expires_at <= now:
            return None
        self.lease = Lease(lease.owner, lease.epoch, now + timedelta(seconds=ttl_seconds))
        return self.lease

    async def release(self, lease: Lease) -> None:
        if self.lease is not None and self.lease.epoch == lease.epoch:
            self.lease = Lease(lease.owner, lease.epoch, self._clock())

    async def current(self) -> Lease | None:
        return self.lease


class MemoryDeadLetters:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def put(self, stream: str, token: Any, raw: Any, error: str) -> None:
        self.items.append(
            {"stream": stream, "token": token, "event": raw, "error": error, "at": datetime.now(UTC)}
        )
