"""Change events as the handlers see them, and their validation against the contract."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import Timestamp

from enrichment.errors import InvalidEvent
from enrichment.snapshot import DISPLAY_FIELDS, AuthorSnapshot
from handlers.ids import encode_post_id

Token = Mapping[str, Any]

# The fields of a change event the handlers read. The feeds project every other field away ($project),
# so events stay small, far under the server's 16 MB limit of one change event, and the network
# carries less: reading a new field is one edit here. ``_id`` is the resume token (never projected
# away: error 280); documentKey and ns identify the event in logs and dead letters.
_EVENT_FIELDS = ("_id", "operationType", "clusterTime", "documentKey", "ns")
POST_EVENT_FIELDS: tuple[str, ...] = (
    *_EVENT_FIELDS,
    *(f"fullDocument.{f}" for f in ("_id", "author_id", "text", "created_at")),
)


def post_event_fields(extra: Sequence[str] = (), changes: bool = False) -> tuple[str, ...]:
    """The posts stream's fields: the creation's, ``extra`` document fields (visible, version,
    soft-delete), and with ``changes`` what edits and deletes need: the update's description
    (whole: a visible field's nested edit is a dotted key, which a projection cannot name) and the
    pre-image's author."""
    fields = [*POST_EVENT_FIELDS, *(f"fullDocument.{f}" for f in extra)]
    if changes:
        fields += [
            "updateDescription.updatedFields",
            "updateDescription.removedFields",
            "fullDocumentBeforeChange._id",
            "fullDocumentBeforeChange.author_id",
        ]
    return tuple(fields)


PROFILE_EVENT_FIELDS: tuple[str, ...] = (
    *_EVENT_FIELDS,
    "updateDescription.updatedFields",
    "updateDescription.removedFields",
    *(f"fullDocument.{f}" for f in ("_id", "version", *sorted(DISPLAY_FIELDS))),
)
# Set by the feed's pipeline under ``mongo.large_events = "skip"`` on an event whose documents were
# left out because the event would exceed 16 MB: their size in bytes.
OVERSIZE_FIELD = "fanoutOversizeBytes"


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change-stream event with its resume token. ``raw`` is the event as the server sent it."""

    stream: str
    token: Token
    op: str
    raw: Mapping[str, Any]
    fragments: int = 1  # > 1: reassembled from $changeStreamSplitLargeEvent fragments

    @classmethod
    def from_raw(cls, stream: str, raw: Mapping[str, Any]) -> ChangeEvent:
        token = raw.get("_id")
        if not isinstance(token, Mapping):
            # Without a token the event cannot be checkpointed; the server always sends one.
            raise InvalidEvent("change event has no resume token (_id)")
        return cls(stream, token, str(raw.get("operationType", "")), raw)

    @property
    def cluster_time(self) -> datetime | None:
        ts = self.raw.get("clusterTime")
        return ts.as_datetime() if isinstance(ts, Timestamp) else None

    @property
    def oversize_bytes(self) -> int | None:
        """The size of the documents the feed left out of this event (policy "skip"), else None."""
        size = self.raw.get(OVERSIZE_FIELD)
        return size if isinstance(size, int) else None

    def check_size(self) -> None:
        """Raise InvalidEvent for an event that reached us without its documents (too large)."""
        size = self.oversize_bytes
        if size is not None:
            raise InvalidEvent(
                f"change event over the 16 MB limit ({size} bytes of documents); its documents were "
                'left out by mongo.large_events = "skip"'
            )

    @property
    def full_document(self) -> Mapping[str, Any] | None:
        doc = self.raw.get("fullDocument")
        return doc if isinstance(doc, Mapping) else None


@dataclass(frozen=True, slots=True)
class NewPost:
    post_id: Any  # as stored (ObjectId, str, int…); rendered with handlers.ids in messages
    author_id: str
    text: str
    created_at: str | None

    @property
    def id_str(self) -> str:
        """The id in messages: unique per distinct ``_id`` whatever its type (handlers/ids.py)."""
        return encode_post_id(self.post_id)


def parse_new_post(event: ChangeEvent, max_text_bytes: int) -> NewPost:
    """Validate a ``posts`` insert event; raise InvalidEvent naming what is wrong."""
    event.check_size()
    if event.op != "insert":
        raise InvalidEvent(f"posts stream: unexpected operationType {event.op!r}")
    doc = event.full_document
    if doc is None:
        raise InvalidEvent("posts insert has no fullDocument")
    post_id = doc.get("_id")
    if post_id is None or isinstance(post_id, (dict, list)):
        raise InvalidEvent("post _id is missing or not a scalar")
    author_id = doc.get("author_id")
    if not isinstance(author_id, str) or not author_id:
        raise InvalidEvent(f"post {post_id}: author_id must be a non-empty string")
    text = doc.get("text", "")
    if not isinstance(text, str):
        raise InvalidEvent(f"post {post_id}: text must be a string")
    if len(text.encode("utf-8", "surrogatepass")) > max_text_bytes:
        raise InvalidEvent(f"post {post_id}: text is larger than {max_text_bytes} bytes")
    created = doc.get("created_at")
    if isinstance(created, datetime):
        created_at: str | None = created.isoformat()
    elif created is None or isinstance(created, str):
        created_at = created
    else:
        raise InvalidEvent(f"post {post_id}: created_at must be a date or string")
    return NewPost(post_id, author_id, text, created_at)


@dataclass(frozen=True, slots=True)
class ProfileChange:
    snapshot: AuthorSnapshot


@dataclass(frozen=True, slots=True)
class ProfileDeleted:
    user_id: str


def parse_profile_change(event: ChangeEvent) -> ProfileChange | ProfileDeleted | None:
    """A display-field change, a deletion, or None when the event does not concern snapshots.

    Raises InvalidEvent when the looked-up profile is malformed.
    """
    event.check_size()
    if event.op == "delete":
        # A delete carries only the documentKey. A non-string _id was never a user (nor cached).
        key = event.raw.get("documentKey")
        user_id = key.get("_id") if isinstance(key, Mapping) else None
        return ProfileDeleted(user_id) if isinstance(user_id, str) and user_id else None
    if event.op == "update":
        desc = event.raw.get("updateDescription")
        if not isinstance(desc, Mapping):
            raise InvalidEvent("profiles update has no updateDescription")
        touched = set(desc.get("updatedFields") or {}) | set(desc.get("removedFields") or [])
        # "avatar_url.x" style paths touch the top-level field too.
        if not {path.split(".", 1)[0] for path in touched} & DISPLAY_FIELDS:
            return None
    elif event.op not in ("replace", "insert"):
        return None
    # A replace has no diff: assume it touched the display fields. An insert is a new profile:
    # posts written before it (embedded with no snapshot) get theirs now.
    doc = event.full_document
    if doc is None:
        # updateLookup found nothing: the profile was deleted since; nothing to rewrite.
        return None
    return ProfileChange(AuthorSnapshot.from_profile(doc))
