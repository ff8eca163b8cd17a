"""Followers → chunks → publishes → confirms: the fan-out loop of one follower range (a job).

Followers stream in pages in ascending id order (the FollowerGraph port); each recipient is kept
once and never the author; chunks of ``chunk_size`` are published as soon as they fill, with one
chunk of look-ahead so the last one can say it is last. Memory holds at most a page plus a chunk,
whatever the follower count.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import operator
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from handlers.confirms import ConfirmSet
from handlers.ports import OutgoingMessage, Publisher


class ChunkCounts(Protocol):
    messages: int
    recipients: int


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


Encode = Callable[[list[str], int, bool], OutgoingMessage]  # (recipients, chunk index, last?)


async def send_chunks(
    pages: AsyncGenerator[list[str], None],
    author_id: str,
    encode: Encode,
    publisher: Publisher,
    size: int,
    counts: ChunkCounts,
) -> None:
    """Publish the post's chunks to the followers ``pages`` stream and wait for every confirm,
    counting each message and its recipients in ``counts`` as it is sent.

    Raises when a publish is not confirmed: the job is retried (redelivered) under the same ids.
    """
    confirms = ConfirmSet()

    async def send(recipients: list[str], index: int, last: bool) -> None:
        confirms.add(await publisher.send(encode(recipients, index, last)))
        counts.messages += 1
        counts.recipients += len(recipients)

    index = 0
    # One chunk of look-ahead, so the last chunk can say it is last.
    ready: list[str] | None = None
    buffered: list[str] = []
    previous: str | None = None  # the last recipient kept, to drop its repeats on the next page
    # aclosing: stopping early (a failed publish) closes the follower cursor at once.
    async with contextlib.aclosing(pages):
        async for page in pages:
            page = recipients_of(page, author_id, previous)
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
                    await send(ready, index, last=False)
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
            await send(ready, index, last=not buffered)
            index += 1
        if buffered:
            await send(buffered, index, last=True)
    await confirms.wait()
