"""One job's follower range → chunks → confirms.

Followers stream in ascending id order a page at a time, so memory holds at most a page plus one
chunk, whatever the range's size. Each recipient appears once (repeated follow edges are adjacent
in that order) and the author never. Returns only when every chunk is confirmed: the caller may
then acknowledge the job; on any failure it raises and the job must be redelivered, which replays
the same message ids with the same recipients while the range's followers are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from handlers.chunks import ChunkCounts, send_chunks
from handlers.contract import RangeChunkEncoder
from handlers.jobs import FanoutJob
from handlers.ports import FollowerGraph, Publisher


@dataclass(slots=True)
class _Counts:
    messages: int = 0
    recipients: int = 0


@dataclass(frozen=True, slots=True)
class RangeResult:
    chunks: int
    recipients: int


async def fan_out_range(
    job: FanoutJob,
    graph: FollowerGraph,
    publisher: Publisher,
    chunk_size: int,
    process_counts: ChunkCounts | None = None,
) -> RangeResult:
    """Publish the chunks of ``job``'s range and wait for every confirm.

    A range of a multi-range post that has become empty (unfollows since planning) still sends one
    chunk with no recipients, marked last, so a consumer can count a post's ranges to completion.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    counts = _Counts()
    rng = job.range
    pages = graph.follower_pages(job.author_id, rng.after, rng.until)
    encode = RangeChunkEncoder(
        job.post_id, job.head, job.range_index, job.range_count, job.kind, job.edit
    ).message
    await send_chunks(pages, job.author_id, encode, publisher, chunk_size, counts)
    if counts.messages == 0 and job.range_count > 1:
        await (await publisher.send(encode([], 0, True)))
        counts.messages += 1
    if process_counts is not None:  # once, for a range fully confirmed: retries do not count twice
        process_counts.messages += counts.messages
        process_counts.recipients += counts.recipients
    return RangeResult(counts.messages, counts.recipients)
