"""New posts: enrich the batch once, embed the snapshots, fan out to followers in chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from loguru import logger

from enrichment.cache import LayeredCache
from enrichment.errors import InvalidEvent
from enrichment.snapshot import AuthorSnapshot
from handlers.confirms import ConfirmSet
from handlers.events import ChangeEvent, NewPost, parse_new_post
from handlers.ports import FollowerGraph, OutgoingMessage, PostStore, Publisher

ROUTING_KEY = "post.created"


@dataclass(slots=True)
class PostStats:
    posts: int = 0
    messages: int = 0
    recipients: int = 0
    snapshots_written: int = 0
    author_missing: int = 0


def post_message(
    post: NewPost, author: AuthorSnapshot | None, recipients: list[str], index: int, last: bool
) -> OutgoingMessage:
    body: dict[str, Any] = {
        "schema": 1,
        "type": ROUTING_KEY,
        "post": {
            "id": post.id_str,
            "author_id": post.author_id,
            "created_at": post.created_at,
            "text": post.text,
        },
        "author": author.to_dict() if author is not None else None,
        "recipients": recipients,
        "chunk": {"index": index, "last": last},
    }
    return OutgoingMessage(
        routing_key=ROUTING_KEY,
        message_id=f"post:{post.id_str}:chunk:{index}",
        correlation_id=post.id_str,
        body=orjson.dumps(body),
    )


class PostCreatedHandler:
    def __init__(
        self,
        cache: LayeredCache,
        posts: PostStore,
        graph: FollowerGraph,
        publisher: Publisher,
        chunk_size: int,
        max_text_bytes: int = 256 * 1024,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self._cache = cache
        self._posts = posts
        self._graph = graph
        self._publisher = publisher
        self._chunk_size = chunk_size
        self._max_text = max_text_bytes
        self.stats = PostStats()

    async def handle_events(self, events: Sequence[ChangeEvent]) -> list[BaseException | None]:
        """Validate, then handle the valid posts as one batch. Invalid ones fail with InvalidEvent."""
        results: list[BaseException | None] = [None] * len(events)
        valid: list[NewPost] = []
        positions: list[int] = []
        for i, event in enumerate(events):
            try:
                valid.append(parse_new_post(event, self._max_text))
                positions.append(i)
            except InvalidEvent as exc:
                results[i] = exc
        if valid:
            for i, result in zip(positions, await self.handle_batch(valid), strict=True):
                results[i] = result
        return results

    async def handle_batch(self, batch: Sequence[NewPost]) -> list[BaseException | None]:
        """Handle posts that arrived together. One result per post: None when done, else its error.

        A post is done only when every chunk is confirmed and its snapshot is written.
        """
        if not batch:
            return []
        # One layered lookup for the whole batch; a failure here fails every post in it.
        authors = await self._cache.get_many(p.author_id for p in batch)
        to_write = [(p.post_id, snap) for p in batch if (snap := authors.get(p.author_id)) is not None]
        if to_write:
            self.stats.snapshots_written += await self._posts.set_snapshots(to_write)
        results = await asyncio.gather(
            *(self._fan_out(p, authors.get(p.author_id)) for p in batch), return_exceptions=True
        )
        out: list[BaseException | None] = []
        for result in results:
            if isinstance(result, BaseException):
                out.append(result)
            else:
                self.stats.posts += 1
                out.append(None)
        return out

    async def _fan_out(self, post: NewPost, author: AuthorSnapshot | None) -> None:
        if author is None:
            # Published without an author: consumers can look it up; the profile cascade fills the
            # post's snapshot when the profile appears. Dropping the fan-out would lose the post.
            self.stats.author_missing += 1
            logger.warning("post {} has no profile for author {}", post.id_str, post.author_id)
        confirms = ConfirmSet()
        index = 0
        # One chunk of look-ahead, so the last chunk can say it is last.
        ready: list[str] | None = None
        current: list[str] = []
        async for follower in self._graph.followers(post.author_id):
            if follower == post.author_id:
                continue
            current.append(follower)
            if len(current) == self._chunk_size:
                if ready is not None:
                    await self._send(confirms, post, author, ready, index, last=False)
                    index += 1
                ready, current = current, []
            if confirms.failed:
                break  # the event will be retried whole; stop reading followers now
        if not confirms.failed:
            if ready is not None:
                await self._send(confirms, post, author, ready, index, last=not current)
                index += 1
            if current:
                await self._send(confirms, post, author, current, index, last=True)
        await confirms.wait()

    async def _send(
        self,
        confirms: ConfirmSet,
        post: NewPost,
        author: AuthorSnapshot | None,
        recipients: list[str],
        index: int,
        last: bool,
    ) -> None:
        message = post_message(post, author, recipients, index, last)
        confirms.add(await self._publisher.send(message))
        self.stats.messages += 1
        self.stats.recipients += len(recipients)
