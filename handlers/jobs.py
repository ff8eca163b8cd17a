"""Fan-out jobs: what the tailer hands to fan-out workers (the job contract: encode, decode, check).

A job is one follower range of one post (schemas/fanout.job.v1.json). It carries everything the
fan-out needs without another lookup: the post and the author snapshot, encoded once by the tailer
as ``head`` and copied byte for byte into every chunk, the author id, and the range as keyset
bounds on ``follower_id`` (``after`` exclusive, ``until`` inclusive, null = open). Bounds, not
offsets: a follow or unfollow between two deliveries of a range changes only that range.

A job's ``kind`` is the message it becomes: ``post.created`` (head: the post and its author
snapshot), ``post.updated`` (head: the post's visible fields and the edit's identity; the job also
carries ``edit``, the edit's id component) or ``post.deleted`` (head: the post id and author). A job
without ``kind`` (none are produced, but the contract allows it) is a creation. The chunks a worker
makes of a job are encoded by handlers/contract.py (``RangeChunkEncoder``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard

import orjson

from enrichment.errors import InvalidJob
from handlers.contract import POST_CREATED, POST_DELETED, POST_UPDATED, event_prefix
from handlers.ports import OutgoingMessage

JOB_SCHEMA: Final = 1
KINDS: Final = frozenset({POST_CREATED, POST_UPDATED, POST_DELETED})
# A job's body names ordinary or bulk (LANES); "backfill" is only a queue: repair jobs routed there.
Lane = Literal["ordinary", "bulk", "backfill"]
LANES: Final[frozenset[str]] = frozenset({"ordinary", "bulk"})
DEFERRED: Final = "deferred"  # routing key of the delay queue; it dead-letters into the bulk lane


@dataclass(frozen=True, slots=True)
class FollowerRange:
    """Keyset bounds on ``follower_id``: ``after`` < id <= ``until``; None leaves that side open."""

    after: str | None = None
    until: str | None = None

    def __post_init__(self) -> None:
        if self.after is not None and self.until is not None and self.after >= self.until:
            raise ValueError(f"empty follower range: after {self.after!r} >= until {self.until!r}")

    def __contains__(self, follower_id: object) -> bool:
        if not isinstance(follower_id, str):
            return False
        return (self.after is None or follower_id > self.after) and (
            self.until is None or follower_id <= self.until
        )


@dataclass(frozen=True, slots=True)
class FanoutJob:
    kind: str
    post_id: str  # the post's id as messages render it (unique per _id); computed by the producer
    author_id: str
    head: bytes  # JSON object {"post": {...}, "author": {...} | null}, copied into every chunk
    range: FollowerRange
    range_index: int
    range_count: int
    lane: Lane
    edit: str | None = None  # an edit's id component (post.updated only): part of every message id

    def __post_init__(self) -> None:
        event_prefix("job", self.kind, self.edit)  # an unknown kind, or an edit without its id, is a bug

    @property
    def message_id(self) -> str:
        """The job's own AMQP message id: one per range of a post's event, stable across replays."""
        return f"{event_prefix('job', self.kind, self.edit)}{self.post_id}:range:{self.range_index}"


def encode_job(job: FanoutJob) -> bytes:
    """The job's body: the head is spliced in as is, never decoded and encoded again."""
    doc: dict[str, Any] = {
        "schema": JOB_SCHEMA,
        "kind": job.kind,
        "post_id": job.post_id,
        "author_id": job.author_id,
        "lane": job.lane,
        "range": {
            "index": job.range_index,
            "count": job.range_count,
            "after": job.range.after,
            "until": job.range.until,
        },
    }
    if job.edit is not None:
        doc["edit"] = job.edit
    doc["head"] = None
    frame = orjson.dumps(doc)
    return b"".join((frame[: -len(b"null}")], job.head, b"}"))


def job_message(job: FanoutJob, deferred: bool = False) -> OutgoingMessage:
    """The job as a message for the job exchange: routed to its lane, or to the delay queue."""
    return OutgoingMessage(
        routing_key=DEFERRED if deferred else job.lane,
        message_id=job.message_id,
        correlation_id=job.post_id,
        body=encode_job(job),
    )


def decode_job(body: bytes) -> FanoutJob:
    """Parse and check a job body; raise InvalidJob naming the first problem."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJob(f"job is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidJob("job is not a JSON object")
    if doc.get("schema") != JOB_SCHEMA:
        raise InvalidJob(f"job schema {doc.get('schema')!r} is not {JOB_SCHEMA}")
    kind, lane = doc.get("kind", POST_CREATED), doc.get("lane")
    if kind not in KINDS:
        raise InvalidJob(f"unknown job kind {kind!r}")
    if lane not in LANES:
        raise InvalidJob(f"unknown lane {lane!r}")
    post_id, author_id = _text(doc, "post_id"), _text(doc, "author_id")
    rng = doc.get("range")
    if not isinstance(rng, dict):
        raise InvalidJob("range must be an object")
    index: Any = rng.get("index")
    count: Any = rng.get("count")
    if not (_int(index) and _int(count) and 0 <= index < count):
        raise InvalidJob(f"range index {index!r} / count {count!r}: need 0 <= index < count")
    after, until = rng.get("after"), rng.get("until")
    if not (after is None or isinstance(after, str)) or not (until is None or isinstance(until, str)):
        raise InvalidJob("range bounds must be strings or null")
    try:
        bounds = FollowerRange(after, until)
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None
    edit = doc.get("edit")
    if kind == POST_UPDATED:
        if not isinstance(edit, str) or not edit:
            raise InvalidJob("a post.updated job needs edit, a non-empty string")
    elif edit is not None:
        raise InvalidJob(f"a {kind} job has no edit")
    head = doc.get("head")
    if kind == POST_CREATED:
        _check_head(head, post_id, author_id)
    elif kind == POST_UPDATED:
        _check_update_head(head, post_id, author_id, edit)
    else:
        _check_delete_head(head, post_id, author_id)
    # orjson writes what it read in the same key order: the producer's head bytes, byte for byte.
    return FanoutJob(kind, post_id, author_id, orjson.dumps(head), bounds, index, count, lane, edit)


_SNAPSHOT_FIELDS = frozenset({"user_id", "username", "display_name", "avatar_url", "version"})


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidJob(f"{key} must be a non-empty string")
    return value


def _check_head(head: Any, post_id: str, author_id: str) -> None:
    """The head is published verbatim in every chunk, so it must be what schema 2 allows."""
    if not isinstance(head, dict) or set(head) != {"post", "author"}:
        raise InvalidJob("head must be an object with exactly post and author")
    post = head["post"]
    if not isinstance(post, dict) or set(post) != {"id", "author_id", "created_at", "text"}:
        raise InvalidJob("head.post must have exactly id, author_id, created_at and text")
    if post["id"] != post_id or post["author_id"] != author_id:
        raise InvalidJob("head.post does not match the job's post_id and author_id")
    created_at = post["created_at"]
    if not isinstance(post["text"], str) or not (created_at is None or isinstance(created_at, str)):
        raise InvalidJob("head.post.text must be a string and created_at a string or null")
    author = head["author"]
    if author is None:
        return
    if not (
        isinstance(author, dict)
        and set(author) == _SNAPSHOT_FIELDS
        and author["user_id"] == author_id
        and isinstance(author["username"], str)
        and isinstance(author["display_name"], str)
        and (author["avatar_url"] is None or isinstance(author["avatar_url"], str))
        and _int(author["version"])
        and author["version"] >= 0
    ):
        raise InvalidJob("head.author must be null or the author's snapshot")


def _check_update_head(head: Any, post_id: str, author_id: str, edit: Any) -> None:
    """What schemas/post.updated.v1.json allows: the post's visible fields and the edit."""
    if not isinstance(head, dict) or set(head) != {"post", "edit"}:
        raise InvalidJob("head must be an object with exactly post and edit")
    post, change = head["post"], head["edit"]
    if not isinstance(post, dict) or set(post) != {"id", "author_id", "text", "fields"}:
        raise InvalidJob("head.post must have exactly id, author_id, text and fields")
    if post["id"] != post_id or post["author_id"] != author_id:
        raise InvalidJob("head.post does not match the job's post_id and author_id")
    if not isinstance(post["text"], str) or not isinstance(post["fields"], dict):
        raise InvalidJob("head.post.text must be a string and fields an object")
    if not isinstance(change, dict) or set(change) != {"id", "version", "at"} or change["id"] != edit:
        raise InvalidJob("head.edit must have exactly id (the job's edit), version and at")
    if not (change["version"] is None or _int(change["version"])) or not (
        change["at"] is None or isinstance(change["at"], str)
    ):
        raise InvalidJob("head.edit.version must be an integer or null and at a string or null")


def _check_delete_head(head: Any, post_id: str, author_id: str) -> None:
    """What schemas/post.deleted.v1.json allows: the post's id and author, and when."""
    if not isinstance(head, dict) or set(head) != {"post", "deleted_at"}:
        raise InvalidJob("head must be an object with exactly post and deleted_at")
    post = head["post"]
    if not isinstance(post, dict) or post != {"id": post_id, "author_id": author_id}:
        raise InvalidJob("head.post must be exactly the job's id and author_id")
    if not (head["deleted_at"] is None or isinstance(head["deleted_at"], str)):
        raise InvalidJob("head.deleted_at must be a string or null")
