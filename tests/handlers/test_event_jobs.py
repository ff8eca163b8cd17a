"""The job contract and the message ids of edits and deletes: post.updated and post.deleted jobs
against schemas/fanout.job.v1.json, their chunks against their own schemas, ids that never collide
with a creation's, and jobs already queued (no kind) still read as creations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from enrichment.errors import InvalidJob
from handlers.contract import (
    POST_CREATED,
    POST_DELETED,
    POST_UPDATED,
    RangeChunkEncoder,
    chunk_message_id,
    encode_delete_head,
    encode_head,
    encode_update_head,
)
from handlers.jobs import FanoutJob, FollowerRange, decode_job, encode_job, job_message

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


JOB = validator("fanout.job.v1.json")
CHUNKS = {POST_UPDATED: validator("post.updated.v1.json"), POST_DELETED: validator("post.deleted.v1.json")}
PID = "665f00000000000000000001"
EDIT = "t0123456789abcdef"
UPDATE_HEAD = encode_update_head(
    PID, "u1", 'é "new"', {"title": "T", "tags": ["a"]}, EDIT, None, "2026-11-30T08:00:00+00:00"
)
DELETE_HEAD = encode_delete_head(PID, "u1", "2026-11-30T08:00:01+00:00")


def job(kind: str, edit: str | None = None, head: bytes = UPDATE_HEAD, **changes: Any) -> FanoutJob:
    fields: dict[str, Any] = {
        "kind": kind,
        "post_id": PID,
        "author_id": "u1",
        "head": head,
        "range": FollowerRange("f10", "f20"),
        "range_index": 1,
        "range_count": 3,
        "lane": "bulk",
        "edit": edit,
    } | changes
    return FanoutJob(**fields)


@pytest.mark.parametrize(
    "j",
    [
        job(POST_UPDATED, EDIT),
        job(POST_UPDATED, "v7", encode_update_head(PID, "u1", "", {}, "v7", 7, None)),
        job(POST_DELETED, head=DELETE_HEAD),
        job(
            POST_DELETED,
            head=DELETE_HEAD,
            range=FollowerRange(),
            range_index=0,
            range_count=1,
            lane="ordinary",
        ),
    ],
)
def test_edit_and_delete_jobs_match_the_schema_decode_to_themselves_and_make_valid_chunks(
    j: FanoutJob,
) -> None:
    body = encode_job(j)
    assert [e.message for e in JOB.iter_errors(orjson.loads(body))] == []
    assert decode_job(body) == j
    encoder = RangeChunkEncoder(j.post_id, j.head, j.range_index, j.range_count, j.kind, j.edit)
    for index, last in ((0, False), (1, True)):
        message = encoder.message(["r1", "r2"], index, last)
        chunk = orjson.loads(message.body)
        assert [e.message for e in CHUNKS[j.kind].iter_errors(chunk)] == []
        assert message.routing_key == j.kind and message.correlation_id == PID
        # the head is in every chunk byte for byte
        assert j.head[1:-1] in message.body


def test_ids_of_a_post_creation_edits_and_delete_never_collide_and_are_stable() -> None:
    ids = {
        chunk_message_id(PID, 0, 0),
        chunk_message_id(PID, 0, 0, POST_UPDATED, "v1"),
        chunk_message_id(PID, 0, 0, POST_UPDATED, "v2"),
        chunk_message_id(PID, 0, 0, POST_UPDATED, EDIT),
        chunk_message_id(PID, 0, 0, POST_DELETED),
    }
    assert len(ids) == 5
    assert chunk_message_id(PID, 2, 3, POST_UPDATED, "v1") == f"post.updated:v1:{PID}:range:2:chunk:3"
    assert chunk_message_id(PID, 2, 3, POST_DELETED) == f"post.deleted:{PID}:range:2:chunk:3"
    assert chunk_message_id(PID, 2, 3) == f"post:{PID}:range:2:chunk:3"  # as before edits existed
    assert job_message(job(POST_UPDATED, "v1")).message_id == f"job.updated:v1:{PID}:range:1"
    assert job_message(job(POST_DELETED, head=DELETE_HEAD)).message_id == f"job.deleted:{PID}:range:1"
    with pytest.raises(ValueError, match="edit id"):
        chunk_message_id(PID, 0, 0, POST_UPDATED)


def test_post_ids_holding_colons_never_make_one_events_ids_anothers() -> None:
    # Given string post ids that read like another post's event (a string _id may hold colons)
    lookalikes = ["a", "a:deleted", "a:edit:v1", "v1:a", "a:range:0", "deleted:a"]
    events = [(POST_CREATED, None), (POST_UPDATED, "v1"), (POST_DELETED, None)]
    # Then every (post, event, range, chunk) has an id of its own
    ids = [chunk_message_id(p, k, 0, kind, edit) for p in lookalikes for kind, edit in events for k in (0, 1)]
    assert len(set(ids)) == len(ids)
    # and an edit id holding a colon is refused rather than made ambiguous
    with pytest.raises(ValueError, match="without a colon"):
        chunk_message_id("a", 0, 0, POST_UPDATED, "v1:x")


def test_a_queued_job_without_kind_is_a_creation() -> None:
    # Given a creation job as encoded, with its kind taken out
    head = encode_head(PID, "u1", None, "hi", None)
    created = job(POST_CREATED, head=head)
    doc = orjson.loads(encode_job(created))
    del doc["kind"]
    body = orjson.dumps(doc)
    # Then the schema allows it and the worker reads it as the creation it is
    assert [e.message for e in JOB.iter_errors(doc)] == []
    assert decode_job(body) == created


def _mutated(j: FanoutJob, **changes: Any) -> bytes:
    doc = orjson.loads(encode_job(j))
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("body", "message", "schema_says_it"),
    [
        (_mutated(job(POST_UPDATED, EDIT), edit=None), "needs edit", True),
        (_mutated(job(POST_UPDATED, EDIT), edit="v9"), "head.edit", False),  # across fields
        (_mutated(job(POST_DELETED, head=DELETE_HEAD), edit="v1"), "has no edit", True),
        (_mutated(job(POST_UPDATED, EDIT), kind=POST_DELETED, edit=None), "deleted_at", True),
        (_mutated(job(POST_DELETED, head=DELETE_HEAD), head={"post": {"id": PID, "author_id": "u2"}, "deleted_at": None}), "exactly the job's", False),
        (_mutated(job(POST_UPDATED, EDIT), head={"post": {"id": PID, "author_id": "u1", "text": 1, "fields": {}}, "edit": {"id": EDIT, "version": None, "at": None}}), "text must be a string", True),
        (_mutated(job(POST_UPDATED, EDIT), kind="post.liked"), "unknown job kind", True),
    ],
)  # fmt: skip
def test_edit_and_delete_jobs_that_break_the_contract_are_refused(
    body: bytes, message: str, schema_says_it: bool
) -> None:
    with pytest.raises(InvalidJob, match=message):
        decode_job(body)
    # what JSON Schema cannot say across fields (the head naming another post), the decoder checks
    assert bool(list(JOB.iter_errors(orjson.loads(body)))) is schema_says_it


def test_a_job_of_an_edit_cannot_be_built_without_its_edit_id() -> None:
    with pytest.raises(ValueError, match="edit id"):
        job(POST_UPDATED, None)
