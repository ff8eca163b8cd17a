"""The message contract: routing keys, message ids and the encoders of every message the worker
publishes (docs/contract.md, schemas/). A replay encodes the same bytes under the same ids."""

from __future__ import annotations

import orjson

from enrichment.snapshot import AuthorSnapshot
from handlers.ports import OutgoingMessage

POST_CREATED = "post.created"
PROFILE_UPDATED = "profile.updated"
POST_SCHEMA = 2  # post.created bodies: one chunk of one follower range (v2: v1 plus ``range``)
PROFILE_SCHEMA = 1  # profile.updated bodies


def chunk_message_id(post_id: str, range_index: int, index: int) -> str:
    """``post:{post_id}:range:{k}:chunk:{n}``: per range, so ranges fanned out in parallel never
    share one; deterministic, so a redelivered job replays the same ids. ``post_id`` is the typed
    text of handlers/ids.py."""
    return f"post:{post_id}:range:{range_index}:chunk:{index}"


def profile_message_id(snapshot: AuthorSnapshot) -> str:
    """``profile:{user_id}:v:{version}``: a replay of the same version gives the same id."""
    return f"profile:{snapshot.user_id}:v:{snapshot.version}"


def encode_head(
    post_id: str, author_id: str, created_at: str | None, text: str, author: AuthorSnapshot | None
) -> bytes:
    """The post and its author snapshot, encoded once per post (the tailer side)."""
    return orjson.dumps(
        {
            "post": {"id": post_id, "author_id": author_id, "created_at": created_at, "text": text},
            "author": author.to_dict() if author is not None else None,
        }
    )


class RangeChunkEncoder:
    """Encodes the chunks of one job: the head is reused as is; a chunk adds recipients and place."""

    __slots__ = ("_post_id", "_prefix", "_range", "_range_index")

    def __init__(self, post_id: str, head: bytes, range_index: int, range_count: int) -> None:
        self._post_id = post_id
        self._range_index = range_index
        # head[1:-1] is `"post":{...},"author":...`: the object's members without its braces.
        self._prefix = b'{"schema":%d,"type":"%s",%s,"recipients":' % (
            POST_SCHEMA,
            POST_CREATED.encode(),
            head[1:-1],
        )
        self._range = b'},"range":{"index":%d,"count":%d}}' % (range_index, range_count)

    def message(self, recipients: list[str], index: int, last: bool) -> OutgoingMessage:
        chunk = b',"chunk":{"index":%d,"last":%s' % (index, b"true" if last else b"false")
        return OutgoingMessage(
            routing_key=POST_CREATED,
            message_id=chunk_message_id(self._post_id, self._range_index, index),
            correlation_id=self._post_id,
            body=b"".join((self._prefix, orjson.dumps(recipients), chunk, self._range)),
        )


def profile_message(snapshot: AuthorSnapshot) -> OutgoingMessage:
    body = {"schema": PROFILE_SCHEMA, "type": PROFILE_UPDATED, "user": snapshot.to_dict()}
    return OutgoingMessage(
        routing_key=PROFILE_UPDATED,
        message_id=profile_message_id(snapshot),
        correlation_id=snapshot.user_id,
        body=orjson.dumps(body),
    )
