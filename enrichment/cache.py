"""The batch-native read-through cache: L1 (memory) → L2 (Redis) → L3 (profile source).

``get_many`` costs at most one Redis MGET and one source query per call, whatever the batch size.
Concurrent callers that miss on the same id share one lookup (single-flight).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from loguru import logger

from enrichment.errors import ServiceUnavailable
from enrichment.memory import MemoryLayer
from enrichment.ports import ProfileSource
from enrichment.redis_layer import KEPT_OTHER, WRITTEN, RedisLayer
from enrichment.snapshot import MISSING_VERSION, AuthorSnapshot


@dataclass(slots=True)
class CacheStats:
    l1_hits: int = 0
    l2_hits: int = 0
    l3_hits: int = 0
    not_found: int = 0
    shared_waits: int = 0  # ids served by another caller's in-flight lookup
    source_queries: int = 0
    l2_reads: int = 0
    repairs_replayed: int = 0
    repairs_dropped: int = 0


@dataclass(slots=True)
class ChangeOutcome:
    """What the cache layers made of a batch of profile changes."""

    written: int | None  # L2 entries replaced; None: Redis could not be written (owed)
    newer: dict[str, int] = field(default_factory=dict)  # user → a newer version already known
    conflicts: set[str] = field(default_factory=set)  # same version as L2 holds, other content


class LayeredCache:
    """Read-through snapshot cache with version-guarded writes in every layer."""

    def __init__(
        self,
        l1: MemoryLayer,
        l2: RedisLayer | None,
        source: ProfileSource,
        max_repairs: int = 100_000,
    ) -> None:
        self.l1 = l1
        self.l2 = l2
        self._source = source
        self._inflight: dict[str, asyncio.Future[AuthorSnapshot | None]] = {}
        # Profile changes whose L2 replace failed (Redis down). Until written, L2 holds an older
        # snapshot for these users: it is not trusted for them, and the writes are replayed.
        self._repairs: OrderedDict[str, AuthorSnapshot] = OrderedDict()
        self._max_repairs = max_repairs
        self.stats = CacheStats()

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, AuthorSnapshot | None]:
        """Snapshot per id; None means the user does not exist."""
        wanted = list(dict.fromkeys(user_ids))
        found, misses = self.l1.get_many(wanted)
        self.stats.l1_hits += len(found)
        if not misses:
            return found

        waiting: dict[str, asyncio.Future[AuthorSnapshot | None]] = {}
        owned: dict[str, asyncio.Future[AuthorSnapshot | None]] = {}
        loop = asyncio.get_running_loop()
        for user_id in misses:
            pending = self._inflight.get(user_id)
            if pending is not None:
                waiting[user_id] = pending
            else:
                owned[user_id] = self._inflight[user_id] = loop.create_future()

        if owned:
            try:
                found.update(await self._fill(list(owned)))
            except BaseException as exc:
                self._settle(owned, {}, exc)
                raise
            self._settle(owned, found, None)

        if waiting:
            self.stats.shared_waits += len(waiting)
            # shield: one cancelled waiter must not cancel the future other waiters share.
            results = await asyncio.gather(*(asyncio.shield(f) for f in waiting.values()))
            found.update(zip(waiting, results, strict=True))
        return found

    async def _fill(self, user_ids: list[str]) -> dict[str, AuthorSnapshot | None]:
        result: dict[str, AuthorSnapshot | None] = {}
        remaining = user_ids
        if self.l2 is not None:
            await self._repair_l2()
            if self.l2.available:
                self.stats.l2_reads += 1
            l2_hits = await self.l2.get_many(user_ids)
            for user_id, snap in list(l2_hits.items()):
                owed = self._repairs.get(user_id)
                if owed is not None and (snap is None or snap.version < owed.version):
                    del l2_hits[user_id]  # older than a change L2 missed: go to the source
            self.stats.l2_hits += len(l2_hits)
            for user_id, snap in l2_hits.items():
                self.l1.put(user_id, snap)
                result[user_id] = snap
            remaining = [u for u in user_ids if u not in l2_hits]
        if not remaining:
            return result

        self.stats.source_queries += 1
        fetched = await self._source.fetch_many(remaining)
        fills: list[tuple[str, AuthorSnapshot | None]] = []
        for user_id in remaining:
            snap = fetched.get(user_id)
            if snap is None:
                self.stats.not_found += 1
            else:
                self.stats.l3_hits += 1
            fills.append((user_id, snap))
            self.l1.put(user_id, snap)
            result[user_id] = snap
        if self.l2 is not None:
            await self.l2.put_many(fills)
        return result

    def _settle(
        self,
        owned: dict[str, asyncio.Future[AuthorSnapshot | None]],
        found: dict[str, AuthorSnapshot | None],
        error: BaseException | None,
    ) -> None:
        for user_id, future in owned.items():
            # An invalidation may have detached this entry already; never drop a newer lookup's.
            if self._inflight.get(user_id) is future:
                del self._inflight[user_id]
            if future.done():
                continue
            if isinstance(error, asyncio.CancelledError):
                # The owner was cancelled, not the waiters: they see a retryable failure.
                future.set_exception(ServiceUnavailable("shared profile lookup was abandoned"))
                future.exception()
            elif error is not None:
                future.set_exception(error)
                # Mark retrieved so a failure nobody else waited for is not logged as lost.
                future.exception()
            else:
                future.set_result(found.get(user_id))

    async def apply_changes(self, snapshots: Sequence[AuthorSnapshot]) -> ChangeOutcome:
        """Profiles changed (one snapshot per user): drop the old L1 entries and, in one Redis round
        trip, replace each L2 entry that holds an older version.

        Says how many L2 took (0 without L2; None if Redis could not be written: every write of
        the batch is then owed and replayed later), which changes are older than a version some
        layer already knows, and which repeat a known version with other content.
        """
        outcome = ChangeOutcome(0)
        for snapshot in snapshots:
            known = self.l1.known_version(snapshot.user_id)
            owed = self._repairs.get(snapshot.user_id)
            if owed is not None:
                known = max(known if known is not None else owed.version, owed.version)
            if known is not None and known > snapshot.version:
                outcome.newer[snapshot.user_id] = known
            self.l1.drop(snapshot.user_id, min_version=snapshot.version)
            # A lookup in flight may have read the old profile: later callers must not join it.
            self._inflight.pop(snapshot.user_id, None)
        if self.l2 is None or not snapshots:
            return outcome
        checked = await self.l2.put_many_checked([(s.user_id, s) for s in snapshots])
        if checked is None:
            outcome.written = None
            for snapshot in snapshots:
                self._owe(snapshot)
            return outcome
        for snapshot, (status, held) in zip(snapshots, checked, strict=True):
            if status == WRITTEN:
                outcome.written = (outcome.written or 0) + 1
            elif held > snapshot.version:
                outcome.newer[snapshot.user_id] = max(held, outcome.newer.get(snapshot.user_id, held))
            elif status == KEPT_OTHER:
                outcome.conflicts.add(snapshot.user_id)
        return outcome

    async def apply_deletes(self, user_ids: Sequence[str]) -> dict[str, int] | None:
        """Profiles deleted: tombstone them in L1 and L2, unless the source holds them again
        (re-created since; a replayed delete must not hide them).

        Returns the version each tombstone carries (the highest known: older fills are refused),
        which replicas are told, or None if Redis could not take the tombstones.
        """
        self.stats.source_queries += 1
        present = await self._source.fetch_many(user_ids)
        versions: dict[str, int] = {}
        for user_id in user_ids:
            if user_id in present:
                continue
            owed = self._repairs.pop(user_id, None)  # an owed older write must not be replayed
            known = self.l1.known_version(user_id)
            version = max(
                known if known is not None else MISSING_VERSION,
                owed.version if owed is not None else MISSING_VERSION,
            )
            self.l1.forget(user_id, version)
            self._inflight.pop(user_id, None)
            versions[user_id] = version
        if self.l2 is None or not versions:
            return versions
        stored = await self.l2.put_tombstones(list(versions.items()))
        if stored is None:
            return None
        for user_id, version in zip(list(versions), stored, strict=True):
            if version > versions[user_id]:
                versions[user_id] = version
                self.l1.forget(user_id, version)
        return versions

    def _owe(self, snapshot: AuthorSnapshot) -> None:
        owed = self._repairs.get(snapshot.user_id)
        if owed is not None and owed.version >= snapshot.version:
            return
        self._repairs[snapshot.user_id] = snapshot
        self._repairs.move_to_end(snapshot.user_id)
        if len(self._repairs) > self._max_repairs:
            dropped, _ = self._repairs.popitem(last=False)
            self.stats.repairs_dropped += 1
            logger.error(
                "L2 repair backlog is full ({}): Redis may serve a stale snapshot of {} until its TTL",
                self._max_repairs,
                dropped,
            )

    async def _repair_l2(self) -> None:
        """Replay the L2 writes that failed while Redis was away, once it answers again."""
        if not self._repairs or self.l2 is None or not self.l2.available:
            return
        owed = list(self._repairs.items())
        if await self.l2.put_many([(user_id, snap) for user_id, snap in owed]) is None:
            return
        for user_id, snap in owed:
            if self._repairs.get(user_id) is snap:
                del self._repairs[user_id]
        self.stats.repairs_replayed += len(owed)

    @property
    def repairs_pending(self) -> int:
        return len(self._repairs)

    def clear_local(self) -> None:
        """Forget every L1 entry: invalidations may have been missed (a gap on the bus, a new term)."""
        self.l1.clear()

    def on_remote_invalidation(self, user_id: str, version: int) -> None:
        """Another replica saw ``user_id`` change to ``version``."""
        self.l1.drop(user_id, min_version=version)
        self._inflight.pop(user_id, None)
