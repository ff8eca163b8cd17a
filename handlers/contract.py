"""The message contract: routing keys, message ids and the encoders of every message the worker
publishes (docs/contract.md, schemas/). A replay encodes the same bytes under the same ids."""

from __future__ import annotations

from typing import Any, Final

import orjson

from enrichment.snapshot import AuthorSnapshot
from handlers.ports import OutgoingMessage

POST_CREATED = "post.created"
POST_UPDATED = "post.updated"
POST_DELETED = "post.deleted"
PROFILE_UPDATED = "profile.updated"
POST_SCHEMA = 2  # post.created bodies: one chunk of one follower range (v2: v1 plus ``range``)
PROFILE_SCHEMA = 1  # profile.updated bodies
# The body schema of each kind of post message (schemas/<kind>.v<n>.json).
POST_SCHEMAS: Final[dict[str, int]] = {POST_CREATED: POST_SCHEMA, POST_UPDATED: 1, POST_DELETED: 1}


def event_prefix(noun: str, kind: str, edit: str | None) -> str:
    """What starts a post's message (``noun`` "post") or job (``noun`` "job") ids, naming its event:
    ``post:`` for the creation (the ids it always had), ``post.updated:{e}:`` for an edit and
    ``post.deleted:`` for the delete. The event comes before the post id, and an edit id has no
    colon, so no post id (a string ``_id`` may hold colons) can make one event's ids another's."""
    if kind == POST_CREATED:
        return f"{noun}:"
    if kind == POST_UPDATED:
        if not edit or ":" in edit:
            raise ValueError(f"an edit needs its edit id, without a colon: {edit!r}")
        return f"{noun}.updated:{edit}:"
    if kind == POST_DELETED:
        return f"{noun}.deleted:"
    raise ValueError(f"not a post message kind: {kind!r}")


def chunk_message_id(
    post_id: str, range_index: int, index: int, kind: str = POST_CREATED, edit: str | None = None
) -> str:
    """``post:{post_id}:range:{k}:chunk:{n}`` (creation), ``post.updated:{e}:{post_id}:range:…``
    (an edit, ``e`` from handlers/lifecycle.py) or ``post.deleted:{post_id}:range:…``: per range,
    so ranges fanned out in parallel never share one; deterministic, so a redelivered job replays
    the same ids. ``post_id`` is the typed text of handlers/ids.py."""
    return f"{event_prefix('post', kind, edit)}{post_id}:range:{range_index}:chunk:{index}"


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


def encode_update_head(
    post_id: str,
    author_id: str,
    text: str,
    fields: dict[str, Any],
    edit: str,
    version: int | None,
    at: str | None,
) -> bytes:
    """An edit's post (its visible fields as they are now) and the edit's identity, encoded once.

    ``fields`` holds the configured visible fields besides text, JSON-ready; ``at`` is the edit's
    cluster time, which orders edits when the post has no version field."""
    return orjson.dumps(
        {
            "post": {"id": post_id, "author_id": author_id, "text": text, "fields": fields},
            "edit": {"id": edit, "version": version, "at": at},
        }
    )


def encode_delete_head(post_id: str, author_id: str, at: str | None) -> bytes:
    """A delete: which post, whose, and when (the event's cluster time)."""
    return orjson.dumps({"post": {"id": post_id, "author_id": author_id}, "deleted_at": at})


class RangeChunkEncoder:
    """Encodes the chunks of one job: the head is reused as is; a chunk adds recipients and place."""

    __slots__ = ("_edit", "_kind", "_post_id", "_prefix", "_range", "_range_index")

    def __init__(
        self,
        post_id: str,
        head: bytes,
        range_index: int,
        range_count: int,
        kind: str = POST_CREATED,
        edit: str | None = None,
    ) -> None:
        event_prefix("post", kind, edit)  # refuse an unknown kind, or an edit without its id, up front
        self._post_id = post_id
        self._range_index = range_index
        self._kind = kind
        self._edit = edit
        # head[1:-1] is `"post":{...},...`: the object's members without its braces.
        self._prefix = b'{"schema":%d,"type":"%s",%s,"recipients":' % (
            POST_SCHEMAS[kind],
            kind.encode(),
            head[1:-1],
        )
        self._range = b'},"range":{"index":%d,"count":%d}}' % (range_index, range_count)

    def message(self, recipients: list[str], index: int, last: bool) -> OutgoingMessage:
        chunk = b',"chunk":{"index":%d,"last":%s' % (index, b"true" if last else b"false")
        return OutgoingMessage(
            routing_key=self._kind,
            message_id=chunk_message_id(self._post_id, self._range_index, index, self._kind, self._edit),
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
