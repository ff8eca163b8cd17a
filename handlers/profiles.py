"""Profile edits: invalidate every cache layer everywhere, rewrite embedded snapshots, announce."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from loguru import logger

from enrichment.cache import LayeredCache
from enrichment.errors import ServiceUnavailable
from enrichment.invalidation import InvalidationBus
from enrichment.snapshot import AuthorSnapshot
from handlers.events import ChangeEvent, ProfileDeleted, parse_profile_change
from handlers.ports import OutgoingMessage, PostStore, Publisher, Report, collect

ROUTING_KEY = "profile.updated"


@dataclass(slots=True)
class ProfileStats:
    changes: int = 0
    ignored: int = 0  # edits that touched no display field
    posts_rewritten: int = 0
    l2_replaced: int = 0
    deleted: int = 0  # profiles tombstoned in every cache layer
    stale: int = 0  # older than a version already seen: not announced (a replayed replace, a reorder)
    unbumped: int = 0  # display fields changed without a version bump (the app broke the contract)


def profile_message(snapshot: AuthorSnapshot) -> OutgoingMessage:
    body = {"schema": 1, "type": ROUTING_KEY, "user": snapshot.to_dict()}
    return OutgoingMessage(
        routing_key=ROUTING_KEY,
        message_id=f"profile:{snapshot.user_id}:v:{snapshot.version}",
        correlation_id=snapshot.user_id,
        body=orjson.dumps(body),
    )


class ProfileChangedHandler:
    def __init__(
        self,
        cache: LayeredCache,
        bus: InvalidationBus,
        posts: PostStore,
        publisher: Publisher,
        rewrite_concurrency: int = 16,
    ) -> None:
        self._cache = cache
        self._bus = bus
        self._posts = posts
        self._publisher = publisher
        # Shared by every batch: a storm of edits must not put a thousand update_many on MongoDB at
        # once, nor keep the loop so busy that other batches' invalidations wait behind it.
        self._rewrites = asyncio.Semaphore(rewrite_concurrency)
        # Users with a cascade in flight: a later delete of one waits for it, or the cascade's
        # Redis write could land after the tombstone and serve a deleted profile until its TTL.
        self._busy: Counter[str] = Counter()
        self._idle = asyncio.Condition()
        self.stats = ProfileStats()

    async def process(self, events: Sequence[ChangeEvent], report: Report) -> None:
        """Cascade the batch's display changes, then its deletes, reporting each as it finishes.

        Other edits are counted as ignored. Changes go first: a change and a delete of one user in
        a batch must end deleted (a delete of a profile re-created since is skipped by the cache).
        """
        snapshots: list[AuthorSnapshot] = []
        positions: list[int] = []
        deleted: list[str] = []
        deleted_at: list[int] = []
        for i, event in enumerate(events):
            try:
                change = parse_profile_change(event)
            except Exception as exc:
                report(i, exc)
                continue
            if change is None:
                self.stats.ignored += 1
                report(i, None)
            elif isinstance(change, ProfileDeleted):
                deleted.append(change.user_id)
                deleted_at.append(i)
            else:
                snapshots.append(change.snapshot)
                positions.append(i)
        if snapshots:
            await self.cascade(snapshots, lambda j, error: report(positions[j], error))
        if deleted:
            error = await self.delete(deleted)
            for i in deleted_at:
                report(i, error)

    async def delete(self, user_ids: Sequence[str]) -> BaseException | None:
        """Profiles deleted: tombstone them in L1 and Redis and tell every replica, at once.

        Embedded snapshots in existing posts are left as they are (docs/contract.md). None when
        done; else the error (retried): a tombstone Redis or the replicas missed would let them
        serve the deleted profile until its TTL.
        """
        try:
            async with self._idle:
                await self._idle.wait_for(lambda: not any(self._busy[u] for u in user_ids))
            versions = await self._cache.apply_deletes(user_ids)
            if versions is None:
                raise ServiceUnavailable(f"Redis did not take the tombstone of {user_ids[0]} yet")
            changes = list(versions.items())
            if not (await self._bus.publish_many(changes) or await self._retry_publish(changes)):
                raise ServiceUnavailable(f"replicas were not told that {user_ids[0]} was deleted")
        except Exception as exc:
            return exc
        self.stats.deleted += len(versions)
        return None

    async def handle_events(self, events: Sequence[ChangeEvent]) -> list[BaseException | None]:
        """``process`` with the results collected in order."""
        return await collect(self.process, events)

    async def _retry_publish(self, changes: list[tuple[str, int]]) -> bool:
        await asyncio.sleep(0.1)
        return await self._bus.publish_many(changes)

    def _newest_per_user(self, snapshots: Sequence[AuthorSnapshot]) -> dict[str, int]:
        """Index of each user's newest change in the batch; the others are never announced, so a
        batch cannot announce v7 after v8."""
        newest: dict[str, int] = {}
        for i, snapshot in enumerate(snapshots):
            j = newest.get(snapshot.user_id)
            if j is not None and snapshot.version == snapshots[j].version and snapshot != snapshots[j]:
                self._unbumped(snapshot)
            if j is None or snapshot.version >= snapshots[j].version:
                newest[snapshot.user_id] = i
        return newest

    def _unbumped(self, snapshot: AuthorSnapshot) -> None:
        self.stats.unbumped += 1
        logger.warning(
            "profile {} changed its display fields without a version bump (still v{}): consumers "
            "that saw profile:{}:v:{} keep the earlier content; the app must bump profiles.version",
            snapshot.user_id,
            snapshot.version,
            snapshot.user_id,
            snapshot.version,
        )

    def _stale(self, snapshot: AuthorSnapshot, newer: int) -> None:
        self.stats.stale += 1
        logger.info(
            "profile {} v{} is older than v{} already seen: not announced",
            snapshot.user_id,
            snapshot.version,
            newer,
        )

    async def cascade(self, snapshots: Sequence[AuthorSnapshot], report: Report) -> None:
        """Cascade display changes. Idempotent: a replay changes nothing newer.

        One change per user is kept, the newest of the batch. Every cache layer on every replica
        first, for the whole batch at once: one Redis write and one pipelined round of
        invalidations, however many changes (a storm of edits must not take a Redis connection per
        edit). A change older than a version a cache layer already knows (L1's version floor, L2's
        stored version) is not announced: ``profile.updated`` never goes back in version. Then each
        remaining change's posts are rewritten and ``profile.updated`` is published, concurrently.

        If Redis could not take the new snapshots, or other replicas could not be told, everything
        else is still done, then the events fail as ServiceUnavailable: they are retried (and
        replayed after a restart) until it worked, since Redis or a replica's L1 would otherwise
        serve the old snapshots until their TTL. The retries repeat ``profile.updated`` under the
        same message_id, which consumers de-duplicate.
        """
        newest = self._newest_per_user(snapshots)
        chosen = [snapshots[i] for i in newest.values()]
        self._busy.update(newest.keys())
        try:
            await self._cascade(snapshots, newest, chosen, report)
        finally:
            self._busy.subtract(newest.keys())
            for user_id in newest:
                if self._busy[user_id] <= 0:
                    del self._busy[user_id]
            async with self._idle:
                self._idle.notify_all()

    async def _cascade(
        self,
        snapshots: Sequence[AuthorSnapshot],
        newest: dict[str, int],
        chosen: list[AuthorSnapshot],
        report: Report,
    ) -> None:
        try:
            outcome = await self._cache.apply_changes(chosen)
            fresh = [
                (i, s) for i, s in zip(newest.values(), chosen, strict=True) if s.user_id not in outcome.newer
            ]
            changes = [(s.user_id, s.version) for _, s in fresh]
            # One more try before failing the batch: a failure means redoing every cascade in it.
            told = await self._bus.publish_many(changes) or await self._retry_publish(changes)
        except Exception as exc:
            for i in range(len(snapshots)):
                report(i, exc)
            return
        written = outcome.written
        self.stats.l2_replaced += written or 0
        kept = set(newest.values())
        for i, snapshot in enumerate(snapshots):
            if i not in kept:  # superseded within the batch
                latest = snapshots[newest[snapshot.user_id]].version
                if snapshot.version < latest:
                    self._stale(snapshot, latest)
                # else: the same version again (updateLookup read a burst of edits at its newest)
                report(i, None)
            elif (newer := outcome.newer.get(snapshot.user_id)) is not None:
                self._stale(snapshot, newer)
                report(i, None)
            elif snapshot.user_id in outcome.conflicts:
                self._unbumped(snapshot)

        async def one(i: int, snapshot: AuthorSnapshot) -> None:
            try:
                # Awaited first: `x += await ...` reads x before suspending and loses concurrent updates.
                async with self._rewrites:
                    rewritten = await self._posts.rewrite_author_snapshot(snapshot)
                self.stats.posts_rewritten += rewritten
                await (await self._publisher.send(profile_message(snapshot)))
                if written is None:
                    raise ServiceUnavailable(f"Redis did not take {snapshot.user_id} v{snapshot.version} yet")
                if not told:
                    raise ServiceUnavailable(
                        f"replicas were not told of {snapshot.user_id} v{snapshot.version}"
                    )
            except Exception as exc:
                report(i, exc)
                return
            self.stats.changes += 1
            report(i, None)

        await asyncio.gather(*(one(i, s) for i, s in fresh))
