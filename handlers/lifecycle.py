"""A post's life after its creation: which change events of ``posts`` are edits followers see,
which are deletes, and which say nothing to followers.

* An **edit** is an update (or a replace) touching ``text`` or a configured visible field. It carries
  the post's visible fields as the event's ``fullDocument`` holds them (``updateLookup``: the post
  as it is when the worker reads the event) and an **edit id**, the component of its message ids
  that tells edits apart: ``v{n}`` with the post's version field (the version of the content
  carried), else ``t{digest}``, a digest of the event's resume token. A replay of the event reads
  the same token, so it repeats the same ids; two events never share a token, so two edits never
  share ids (a token, unlike the cluster time, also tells apart writes of one transaction).
* A **delete** is a hard delete whose author is in its pre-image (``fullDocumentBeforeChange``), or
  an update (or replace) setting the soft-delete field to anything but null. A hard delete whose
  author cannot be known raises ``AuthorUnknown``: it is dead-lettered with the reason, never
  dropped.
* Anything else (another field's edit, the worker's own snapshot writes, an edit of a post deleted
  since) is ``Ignored``, and counted by the handler.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from bson import ObjectId

from enrichment.errors import InvalidEvent
from handlers.events import ChangeEvent
from handlers.ids import encode_post_id

SNAPSHOT_FIELD = "author_snapshot"  # written by the worker itself (PostStore): never an edit
OWN_WRITE = "the worker's own snapshot write"


@dataclass(frozen=True, slots=True)
class PostRules:
    """What the ``[post_lifecycle]`` settings say, as the handlers need it."""

    edits: bool = True
    visible_fields: tuple[str, ...] = ()  # besides text
    version_field: str = ""
    soft_delete_field: str = ""
    pre_images: bool = False  # the feed asks for pre-images (when-available or required)

    @property
    def visible(self) -> frozenset[str]:
        return frozenset(("text", *self.visible_fields))


@dataclass(frozen=True, slots=True)
class PostEdit:
    post_id: Any
    author_id: str
    text: str
    fields: dict[str, Any]  # the visible fields besides text, JSON-ready
    edit_id: str
    version: int | None
    at: str | None  # the event's cluster time

    @property
    def id_str(self) -> str:
        return encode_post_id(self.post_id)


@dataclass(frozen=True, slots=True)
class PostDelete:
    post_id: Any
    author_id: str
    at: str | None

    @property
    def id_str(self) -> str:
        return encode_post_id(self.post_id)


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


class AuthorUnknown(InvalidEvent):
    """A delete whose author cannot be known: it cannot be routed to the followers."""


def post_fields(rules: PostRules) -> tuple[str, ...]:
    """The document fields the posts stream's handler reads, besides the creation's."""
    extra = (*rules.visible_fields, rules.version_field, rules.soft_delete_field)
    return tuple(f for f in extra if f)


def token_edit_id(event: ChangeEvent) -> str:
    """``t`` + 16 hex digits of the resume token's digest: what a replay reads again."""
    data = event.token.get("_data")
    raw = data.encode() if isinstance(data, str) else orjson.dumps(dict(event.token), default=str)
    return "t" + hashlib.sha256(raw).hexdigest()[:16]


def parse_post_change(
    event: ChangeEvent, rules: PostRules, max_text_bytes: int
) -> PostEdit | PostDelete | Ignored:
    """Classify an update, replace or delete of a post; raise InvalidEvent naming what is wrong."""
    event.check_size()
    key = event.raw.get("documentKey")
    post_id = key.get("_id") if isinstance(key, Mapping) else None
    if post_id is None or isinstance(post_id, (dict, list)):
        raise InvalidEvent(f"posts {event.op}: documentKey._id is missing or not a scalar")
    at = event.cluster_time.isoformat() if event.cluster_time else None
    if event.op == "delete":
        return _hard_delete(event, rules, post_id, at)
    if event.op == "update":
        desc = event.raw.get("updateDescription")
        if not isinstance(desc, Mapping):
            raise InvalidEvent(f"post {post_id}: update has no updateDescription")
        updated, removed = desc.get("updatedFields") or {}, desc.get("removedFields") or []
        if not isinstance(updated, Mapping) or not isinstance(removed, list):
            raise InvalidEvent(f"post {post_id}: malformed updateDescription")
        touched = {str(p).split(".", 1)[0] for p in (*updated, *removed)}
        if touched and touched <= {SNAPSHOT_FIELD}:
            return Ignored(OWN_WRITE)
        soft = rules.soft_delete_field
        if soft and updated.get(soft) is not None:
            return PostDelete(post_id, _author_of_soft_delete(event, post_id), at)
        if not rules.edits or not touched & rules.visible:
            return Ignored("no visible field changed")
    elif event.op == "replace":
        doc = event.full_document
        soft = rules.soft_delete_field
        if doc is not None and soft and doc.get(soft) is not None:
            return PostDelete(post_id, _author_id(doc, post_id), at)
        if not rules.edits:
            return Ignored("edits are off")
    else:
        raise InvalidEvent(f"posts stream: unexpected operationType {event.op!r}")
    return _edit(event, rules, post_id, at, max_text_bytes)


def _edit(
    event: ChangeEvent, rules: PostRules, post_id: Any, at: str | None, max_text_bytes: int
) -> PostEdit | Ignored:
    doc = event.full_document
    if doc is None:
        # updateLookup found nothing: deleted since; its delete event follows.
        return Ignored("post deleted since the edit")
    if rules.soft_delete_field and doc.get(rules.soft_delete_field) is not None:
        return Ignored("post soft-deleted")
    author_id = _author_id(doc, post_id)
    text = doc.get("text", "")
    if not isinstance(text, str):
        raise InvalidEvent(f"post {post_id}: text must be a string")
    if len(text.encode("utf-8", "surrogatepass")) > max_text_bytes:
        raise InvalidEvent(f"post {post_id}: text is larger than {max_text_bytes} bytes")
    fields = {f: _json_ready(doc.get(f), post_id, f) for f in rules.visible_fields}
    version: int | None = None
    if rules.version_field:
        value = doc.get(rules.version_field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidEvent(f"post {post_id}: {rules.version_field} must be a non-negative integer")
        version = value
    edit_id = f"v{version}" if version is not None else token_edit_id(event)
    return PostEdit(post_id, author_id, text, fields, edit_id, version, at)


def _hard_delete(event: ChangeEvent, rules: PostRules, post_id: Any, at: str | None) -> PostDelete:
    before = event.raw.get("fullDocumentBeforeChange")
    if isinstance(before, Mapping):
        return PostDelete(post_id, _author_id(before, post_id), at)
    if not rules.pre_images:
        why = 'post_lifecycle.pre_images is "off"'
    else:
        why = (
            "its pre-image is missing (expired, or written before changeStreamPreAndPostImages "
            "was enabled on the collection)"
        )
    raise AuthorUnknown(
        f"post {post_id} was deleted but its author is unknown, so its followers cannot be told: {why}"
    )


def _author_of_soft_delete(event: ChangeEvent, post_id: Any) -> str:
    for doc in (event.full_document, event.raw.get("fullDocumentBeforeChange")):
        if isinstance(doc, Mapping):
            return _author_id(doc, post_id)
    raise AuthorUnknown(
        f"post {post_id} was soft-deleted but its author is unknown (the post is gone and has no "
        "pre-image), so its followers cannot be told"
    )


def _author_id(doc: Mapping[str, Any], post_id: Any) -> str:
    author_id = doc.get("author_id")
    if not isinstance(author_id, str) or not author_id:
        raise InvalidEvent(f"post {post_id}: author_id must be a non-empty string")
    return author_id


def _json_ready(value: Any, post_id: Any, name: str) -> Any:
    """A visible field's value as JSON can carry it: dates as ISO 8601, ObjectIds as hex."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, post_id, name) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _json_ready(v, post_id, name) for k, v in value.items()}
    raise InvalidEvent(
        f"post {post_id}: visible field {name} holds a {type(value).__name__}, which JSON cannot carry"
    )
