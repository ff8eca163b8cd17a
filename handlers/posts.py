"""New posts: enrich the batch once, embed the snapshots, and hand each post to fan-out as jobs
(``handlers/emitter.py``); the post is done when its jobs are confirmed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from loguru import logger

from enrichment.cache import LayeredCache
from enrichment.errors import InvalidEvent
from enrichment.snapshot import AuthorSnapshot
from handlers.emitter import JobEmitter
from handlers.events import ChangeEvent, NewPost, parse_new_post
from handlers.ports import PostStore, Report


@dataclass(slots=True)
class PostStats:
    posts: int = 0
    messages: int = 0  # chunks fanned out by this process (its fan-out side)
    recipients: int = 0
    snapshots_written: int = 0
    author_missing: int = 0


class PostCreatedHandler:
    def __init__(
        self,
        cache: LayeredCache,
        posts: PostStore,
        emitter: JobEmitter,
        max_text_bytes: int = 256 * 1024,
        stats: PostStats | None = None,
    ) -> None:
        self._cache = cache
        self._posts = posts
        self.emitter = emitter
        self._max_text = max_text_bytes
        self.stats = stats or PostStats()

    @property
    def invalid_follower_ids(self) -> int:
        """Follow edges skipped because their follower_id is not a string (see FollowerGraph)."""
        return self.emitter.graph.invalid_ids

    async def process(self, events: Sequence[ChangeEvent], report: Report) -> None:
        """Validate, then handle the valid posts as one batch, reporting each post as it finishes.

        Invalid events are reported at once with InvalidEvent.
        """
        valid: list[NewPost] = []
        positions: list[int] = []
        for i, event in enumerate(events):
            try:
                valid.append(parse_new_post(event, self._max_text))
                positions.append(i)
            except InvalidEvent as exc:
                report(i, exc)
        if valid:
            await self.handle_batch(valid, lambda j, error: report(positions[j], error))

    async def handle_batch(self, batch: Sequence[NewPost], report: Report) -> None:
        """Handle posts that arrived together. A post is done only when its snapshot is written and
        every one of its fan-out jobs is confirmed; each is reported as soon as it is done."""
        if not batch:
            return
        try:
            # One layered lookup for the whole batch; a failure here fails every post in it.
            authors = await self._cache.get_many(p.author_id for p in batch)
            to_write = [(p.post_id, s) for p in batch if (s := authors.get(p.author_id)) is not None]
            if to_write:
                # Awaited first: `x += await ...` reads x before suspending and loses concurrent updates.
                written = await self._posts.set_snapshots(to_write)
                self.stats.snapshots_written += written
        except Exception as exc:
            for i in range(len(batch)):
                report(i, exc)
            return

        async def one(i: int, post: NewPost) -> None:
            try:
                await self._fan_out(post, authors.get(post.author_id))
            except Exception as exc:
                report(i, exc)
                return
            self.stats.posts += 1
            report(i, None)

        await asyncio.gather(*(one(i, p) for i, p in enumerate(batch)))

    async def _fan_out(self, post: NewPost, author: AuthorSnapshot | None) -> None:
        if author is None:
            # Published without an author: consumers can look it up; the profile cascade fills the
            # post's snapshot when the profile appears. Dropping the fan-out would lose the post.
            self.stats.author_missing += 1
            logger.warning("post {} has no profile for author {}", post.id_str, post.author_id)
        await self.emitter.emit(post, author)
