"""Profile edits: invalidate every cache layer everywhere, rewrite embedded snapshots, announce."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from enrichment.cache import LayeredCache
from enrichment.errors import ServiceUnavailable
from enrichment.invalidation import InvalidationBus
from enrichment.snapshot import AuthorSnapshot
from handlers.events import ChangeEvent, parse_profile_change
from handlers.ports import OutgoingMessage, PostStore, Publisher, Report, collect

ROUTING_KEY = "profile.updated"


@dataclass(slots=True)
class ProfileStats:
    changes: int = 0
    ignored: int = 0  # edits that touched no display field
    posts_rewritten: int = 0
    l2_replaced: int = 0


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
        self, cache: LayeredCache, bus: InvalidationBus, posts: PostStore, publisher: Publisher
    ) -> None:
        self._cache = cache
        self._bus = bus
        self._posts = posts
        self._publisher = publisher
        self.stats = ProfileStats()

    async def process(self, events: Sequence[ChangeEvent], report: Report) -> None:
        """Cascade each display change concurrently, reporting each as it finishes.

        Other edits are counted as ignored. Order does not matter: every write is version-guarded.
        """

        async def one(i: int, event: ChangeEvent) -> None:
            try:
                change = parse_profile_change(event)
                if change is None:
                    self.stats.ignored += 1
                else:
                    await self.handle(change.snapshot)
            except Exception as exc:
                report(i, exc)
                return
            report(i, None)

        await asyncio.gather(*(one(i, e) for i, e in enumerate(events)))

    async def handle_events(self, events: Sequence[ChangeEvent]) -> list[BaseException | None]:
        """``process`` with the results collected in order."""
        return await collect(self.process, events)

    async def handle(self, snapshot: AuthorSnapshot) -> None:
        """Cascade one display change. Idempotent: a replay changes nothing newer.

        If Redis could not take the new snapshot, everything else is still done, then the event
        fails as ServiceUnavailable: it is retried (and replayed after a restart) until Redis has
        it, since Redis would otherwise serve the old snapshot until its TTL. The retries repeat
        ``profile.updated`` under the same message_id, which consumers de-duplicate.
        """
        l2 = await self._cache.apply_change(snapshot)
        if l2:
            self.stats.l2_replaced += 1
        await self._bus.publish(snapshot.user_id, snapshot.version)
        self.stats.posts_rewritten += await self._posts.rewrite_author_snapshot(snapshot)
        confirm = await self._publisher.send(profile_message(snapshot))
        await confirm
        if l2 is None:
            raise ServiceUnavailable(f"Redis did not take {snapshot.user_id} v{snapshot.version} yet")
        self.stats.changes += 1
