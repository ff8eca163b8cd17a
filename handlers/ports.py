"""The collaborators handlers need, as small interfaces. The worker wires real or in-memory ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from enrichment.snapshot import AuthorSnapshot

# Called exactly once per event of a batch, as soon as that event is done: (index, None or error).
Report = Callable[[int, BaseException | None], None]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    routing_key: str
    message_id: str  # deterministic: a replay yields the same id, so consumers can de-duplicate
    correlation_id: str
    body: bytes


class Publisher(Protocol):
    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        """Wait for room in the publish window, send, and return a future that completes on confirm.

        The future fails with PublishFailed if the broker never confirms.
        """
        ...


class FollowerGraph(Protocol):
    def follower_pages(self, user_id: str) -> AsyncGenerator[list[str], None]:
        """Stream the ids following ``user_id`` in ascending id order, a page (one cursor batch) at
        a time, without loading them all. Each page is a new list the caller may keep. Pages, not
        ids: per-id async steps cost more than the rest of a fan-out together.

        The order is a contract: ascending across pages, not only within one (code-point order,
        which is MongoDB's simple-collation order for strings), so repeated edges are adjacent and
        the caller drops them with constant memory. Repeats and the followee itself may appear.
        Only string ids are yielded; others are counted in ``invalid_ids``, never dropped silently.
        """
        ...

    @property
    def invalid_ids(self) -> int:
        """Follower ids skipped so far because they are not strings (recipients are user ids)."""
        ...


class PostStore(Protocol):
    async def set_snapshots(self, items: Sequence[tuple[Any, AuthorSnapshot]]) -> int:
        """Embed each snapshot in its post where the stored one is absent or older. Returns posts changed."""
        ...

    async def rewrite_author_snapshot(self, snapshot: AuthorSnapshot) -> int:
        """Embed ``snapshot`` in every post of its author holding an older (or no) snapshot."""
        ...


class DeadLetters(Protocol):
    async def put(self, stream: str, token: Any, raw: Any, error: str) -> None:
        """Durably keep an event that cannot be handled, with the reason."""
        ...
