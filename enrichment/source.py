"""L3: where profiles really live. The interface the cache reads through on a miss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from enrichment.snapshot import AuthorSnapshot


class ProfileSource(Protocol):
    """Looks up many profiles in one query."""

    async def fetch_many(self, user_ids: Sequence[str]) -> dict[str, AuthorSnapshot]:
        """Snapshots of the users that exist; absent ids do not exist (or are malformed)."""
        ...
