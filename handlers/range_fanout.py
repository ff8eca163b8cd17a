"""One job's follower range → chunks → confirms.

Followers stream in ascending id order a page at a time, so memory holds at most a page plus one
chunk, whatever the range's size. Each recipient appears once (repeated follow edges are adjacent
in that order) and the author never. Returns only when every chunk is confirmed: the caller may
then acknowledge the job; on any failure it raises and the job must be redelivered, which replays
the same message ids with the same recipients while the range's followers are unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from handlers.chunks import recipients_of
from handlers.confirms import ConfirmSet
from handlers.jobs import FanoutJob, RangeChunkEncoder
from handlers.ports import FollowerGraph, OutgoingMessage, Publisher


@dataclass(frozen=True, slots=True)
class RangeResult:
    chunks: int
    recipients: int


async def fan_out_range(
    job: FanoutJob, graph: FollowerGraph, publisher: Publisher, chunk_size: int
) -> RangeResult:
    """Publish the chunks of ``job``'s range and wait for every confirm.

    A range of a multi-range post that has become empty (unfollows since planning) still sends one
    chunk with no recipients, marked last, so a consumer can count a post's ranges to completion.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    encoder = RangeChunkEncoder(job)
    confirms = ConfirmSet()
    sent = recipients = 0

    async def send(message: OutgoingMessage, count: int) -> None:
        nonlocal sent, recipients
        confirms.add(await publisher.send(message))
        sent += 1
        recipients += count

    ready: list[str] | None = None  # one chunk of look-ahead, so the last one can say it is last
    buffered: list[str] = []
    previous: str | None = None
    rng = job.range
    # aclosing: a failed publish stops the loop and closes the follower cursor at once.
    async with contextlib.aclosing(graph.follower_pages(job.author_id, rng.after, rng.until)) as pages:
        async for page in pages:
            page = recipients_of(page, job.author_id, previous)
            if not page:
                continue
            previous = page[-1]
            buffered = buffered + page if buffered else page
            start, end = 0, len(buffered)
            while end - start >= chunk_size:
                if ready is not None:
                    await send(encoder.message(ready, sent, last=False), len(ready))
                ready = buffered[start : start + chunk_size]
                start += chunk_size
            if start:
                buffered = buffered[start:]
            if confirms.failed:
                break
    if not confirms.failed:
        if ready is not None:
            await send(encoder.message(ready, sent, last=not buffered), len(ready))
        if buffered:
            await send(encoder.message(buffered, sent, last=True), len(buffered))
        if sent == 0 and job.range_count > 1:
            await send(encoder.message([], 0, last=True), 0)
    await confirms.wait()
    return RangeResult(sent, recipients)
