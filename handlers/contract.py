"""The message contract: routing keys, message ids and the encoders of every message the worker
publishes (docs/contract.md, schemas/). A replay encodes the same bytes under the same ids."""

from __future__ import annotations

import orjson

from enrichment.snapshot import AuthorSnapshot
from handlers.events import NewPost
from handlers.ports import OutgoingMessage

POST_CREATED = "post.created"
PROFILE_UPDATED = "profile.updated"
SCHEMA = 1  # the ``schema`` number of every message body


def chunk_message_id(post_id: str, index: int) -> str:
    """``post:{post_id}:chunk:{index}``; ``post_id`` is the typed text of handlers/ids.py."""
    return f"post:{post_id}:chunk:{index}"


def profile_message_id(snapshot: AuthorSnapshot) -> str:
    """``profile:{user_id}:v:{version}``: a replay of the same version gives the same id."""
    return f"profile:{snapshot.user_id}:v:{snapshot.version}"


class PostEncoder:
    """Encodes the chunks of one post. The post and author parts are encoded once per post; each
    chunk adds only its recipients and position. Byte for byte what encoding the whole dict gives."""

    __slots__ = ("_head", "_id")

    def __init__(self, post: NewPost, author: AuthorSnapshot | None) -> None:
        head = orjson.dumps(
            {
                "schema": SCHEMA,
                "type": POST_CREATED,
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
            routing_key=POST_CREATED,
            message_id=chunk_message_id(self._id, index),
            correlation_id=self._id,
            body=b"".join((self._head, orjson.dumps(recipients), tail)),
        )


def profile_message(snapshot: AuthorSnapshot) -> OutgoingMessage:
    body = {"schema": SCHEMA, "type": PROFILE_UPDATED, "user": snapshot.to_dict()}
    return OutgoingMessage(
        routing_key=PROFILE_UPDATED,
        message_id=profile_message_id(snapshot),
        correlation_id=snapshot.user_id,
        body=orjson.dumps(body),
    )
