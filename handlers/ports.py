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

        The future fails if the message cannot be confirmed: PublishFailed for an unroutable job;
        the RabbitMQ publisher re-publishes anything else (reconnecting) until it is confirmed.
        """
        ...


class FollowerGraph(Protocol):
    def range_bounds(self, user_id: str, range_size: int) -> AsyncGenerator[str, None]:
        """Split ``user_id``'s followers into ranges of ``range_size`` follow edges: yield, in
        ascending order, the last follower id (inclusive upper bound) of every range but the last,
        which runs to the end. Nothing when they fit one range. Reads ids through the index only
        (one small query per range), never holding the followers: far cheaper than a fan-out.

        ``follower_pages(user_id, after, until)`` then streams one range: ids > ``after`` and <=
        ``until`` (None leaves a side open). Bounds are strings, so a bounded range holds string ids
        only."""
        ...

    def follower_pages(
        self, user_id: str, after: str | None = None, until: str | None = None
    ) -> AsyncGenerator[list[str], None]:
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
