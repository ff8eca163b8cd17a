"""The enrichment room's interfaces: where profiles really live (L3), and the bus that tells other
replicas a profile changed. Their implementations: ``worker/mongo`` and ``enrichment/invalidation``;
the in-memory twins in ``worker/memory``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from enrichment.snapshot import AuthorSnapshot

OnInvalidate = Callable[[str, int], None]
OnGap = Callable[[], None]


class InvalidationBus(Protocol):
    async def publish_many(self, changes: Sequence[tuple[str, int]]) -> bool:
        """Tell every other replica that each ``user_id`` changed to ``version``, in one round trip.

        False if they could not be told: the caller retries, or replicas may serve the old snapshot
        from L1 until its TTL.
        """
        ...

    async def run(self, on_invalidate: OnInvalidate, on_gap: OnGap) -> None:
        """Deliver other replicas' invalidations until cancelled."""
        ...


class ProfileSource(Protocol):
    """Looks up many profiles in one query."""

    async def fetch_many(self, user_ids: Sequence[str]) -> dict[str, AuthorSnapshot]:
        """Snapshots of the users that exist; absent ids do not exist (or are malformed)."""
        ...
