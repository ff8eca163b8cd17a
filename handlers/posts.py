"""New posts: enrich the batch once, embed the snapshots, fan out to followers in chunks."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from loguru import logger

from enrichment.cache import LayeredCache
from enrichment.errors import InvalidEvent
from enrichment.snapshot import AuthorSnapshot
from handlers.confirms import ConfirmSet
from handlers.events import ChangeEvent, NewPost, parse_new_post
from handlers.ports import FollowerGraph, OutgoingMessage, PostStore, Publisher, Report, collect

ROUTING_KEY = "post.created"


@dataclass(slots=True)
class PostStats:
    posts: int = 0
    messages: int = 0
    recipients: int = 0
    snapshots_written: int = 0
    author_missing: int = 0


class PostEncoder:
    """Encodes the chunks of one post. The post and author parts are encoded once per post; each
    chunk adds only its recipients and position. Byte for byte what encoding the whole dict gives."""

    __slots__ = ("_head", "_id")

    def __init__(self, post: NewPost, author: AuthorSnapshot | None) -> None:
        head = orjson.dumps(
            {
                "schema": 1,
                "type": ROUTING_KEY,
                "post": {
                    "id": post.id_str,
                    "author_id": post.author_id,
                    "created_at": post.created_at,
                    "text": post.text,
                },
                "author": author.to_dict() if author is not None else None,
                "recipients": None,
            }
        )
        self._head = head[: -len(b"null}")]  # ends with b'"recipients":'
        self._id = post.id_str

    def message(self, recipients: list[str], index: int, last: bool) -> OutgoingMessage:
        tail = b',"chunk":{"index":%d,"last":%s}}' % (index, b"true" if last else b"false")
        return OutgoingMessage(
            routing_key=ROUTING_KEY,
            message_id=f"post:{self._id}:chunk:{index}",
            correlation_id=self._id,
            body=b"".join((self._head, orjson.dumps(recipients), tail)),
        )


def recipients_of(page: list[str], author_id: str, previous: str | None) -> list[str]:
    """A sorted page of follower ids without the author and without repeats (duplicate follow
    edges), ``previous`` being the last id kept from the pages before.

    The FollowerGraph port streams ids in ascending order, so equal ids are adjacent and this needs
    no memory beyond one id: a 10M-follower fan-out stays flat. Finding the author is a bisection
    and spotting a repeat a C-speed pass; the page is copied only when it has something to drop.
    """
    lo = bisect.bisect_left(page, author_id)
    hi = bisect.bisect_right(page, author_id, lo)
    if lo < hi:
        page = page[:lo] + page[hi:]
    if (page and page[0] == previous) or any(map(operator.eq, page, itertools.islice(page, 1, None))):
        kept: list[str] = []
        for follower in page:
            if follower != previous:
                kept.append(follower)
                previous = follower
        page = kept
    return page


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

    @property
    def invalid_follower_ids(self) -> int:
        """Follow edges skipped because their follower_id is not a string (see FollowerGraph)."""
        return self._graph.invalid_ids

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

    async def handle_events(self, events: Sequence[ChangeEvent]) -> list[BaseException | None]:
        """``process`` with the results collected in order."""
        return await collect(self.process, events)

    async def handle_batch(self, batch: Sequence[NewPost], report: Report) -> None:
        """Handle posts that arrived together. A post is done only when every chunk is confirmed
        and its snapshot is written; each is reported as soon as it is done."""
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
        encoder = PostEncoder(post, author)
        confirms = ConfirmSet()
        size = self._chunk_size
        index = 0
        # One chunk of look-ahead, so the last chunk can say it is last.
        ready: list[str] | None = None
        buffered: list[str] = []
        previous: str | None = None  # the last recipient kept, to drop its repeats on the next page
        # aclosing: stopping early (a failed publish) closes the follower cursor at once.
        async with contextlib.aclosing(self._graph.follower_pages(post.author_id)) as pages:
            async for page in pages:
                page = recipients_of(page, post.author_id, previous)
                if not page:
                    continue
                previous = page[-1]
                if buffered:
                    buffered += page
                else:
                    buffered = page  # pages are the caller's own lists
                start, end = 0, len(buffered)
                while end - start >= size:
                    if ready is not None:
                        await self._send(confirms, encoder.message(ready, index, last=False), len(ready))
                        index += 1
                    # A page that is exactly one chunk (the default sizes) is sent as is, saving a
                    # copy of every recipient id (docs/performance.md).
                    ready = buffered if end == size else buffered[start : start + size]
                    start += size
                if start:
                    buffered = buffered[start:] if start < end else []
                if confirms.failed:
                    break  # the event will be retried whole; stop reading followers now
        if not confirms.failed:
            if ready is not None:
                await self._send(confirms, encoder.message(ready, index, last=not buffered), len(ready))
                index += 1
            if buffered:
                await self._send(confirms, encoder.message(buffered, index, last=True), len(buffered))
        await confirms.wait()

    async def _send(self, confirms: ConfirmSet, message: OutgoingMessage, recipients: int) -> None:
        confirms.add(await self._publisher.send(message))
        self.stats.messages += 1
        self.stats.recipients += recipients
