"""handlers/jobs: the job body against schemas/fanout.job.v1.json, and the chunks made of a job
against schemas/post.created.v2.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from enrichment.errors import InvalidJob
from enrichment.snapshot import AuthorSnapshot
from handlers.contract import RangeChunkEncoder, encode_head
from handlers.ids import encode_post_id
from handlers.jobs import FanoutJob, FollowerRange, decode_job, encode_job, job_message

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


JOB = validator("fanout.job.v1.json")
CHUNK = validator("post.created.v2.json")
ADA = AuthorSnapshot("u1", "ada", "Ada", None, 7)


def job(author: AuthorSnapshot | None = ADA, **changes: Any) -> FanoutJob:
    fields: dict[str, Any] = {
        "kind": "post.created",
        "post_id": "665f00000000000000000001",
        "author_id": "u1",
        "head": encode_head("665f00000000000000000001", "u1", "2026-11-23T15:00:00+00:00", 'hé "x"', author),
        "range": FollowerRange("f10", "f20"),
        "range_index": 1,
        "range_count": 3,
        "lane": "bulk",
    } | changes
    return FanoutJob(**fields)


@pytest.mark.parametrize(
    "j",
    [
        job(),
        job(author=None),
        job(range=FollowerRange(), range_index=0, range_count=1, lane="ordinary"),
        job(range=FollowerRange(None, "f10"), range_index=0),
        job(range=FollowerRange("f20", None), range_index=2),
    ],
)
def test_an_encoded_job_matches_the_schema_and_decodes_to_itself(j: FanoutJob) -> None:
    body = encode_job(j)
    assert [e.message for e in JOB.iter_errors(orjson.loads(body))] == []
    decoded = decode_job(body)
    assert decoded == j
    assert decoded.head == j.head  # the head bytes survive as they are: chunks reuse them


def test_the_job_message_is_routed_to_its_lane_or_the_delay_queue_with_a_stable_id() -> None:
    j = job()
    assert job_message(j).routing_key == "bulk"
    assert job_message(j, deferred=True).routing_key == "deferred"
    assert job_message(j).message_id == "job:665f00000000000000000001:range:1"
    assert job_message(j).correlation_id == j.post_id


def test_chunks_of_a_job_match_the_v2_schema_and_carry_the_head_byte_for_byte() -> None:
    j = decode_job(encode_job(job()))
    encoder = RangeChunkEncoder(j.post_id, j.head, j.range_index, j.range_count)
    first, last = encoder.message(["f11", "f12"], 0, last=False), encoder.message(["f13"], 1, last=True)
    for message in (first, last):
        body = orjson.loads(message.body)
        assert [e.message for e in CHUNK.iter_errors(body)] == []
        assert orjson.dumps({"post": body["post"], "author": body["author"]}) == j.head
        assert body["range"] == {"index": 1, "count": 3}
    assert first.message_id == "post:665f00000000000000000001:range:1:chunk:0"
    assert last.message_id == "post:665f00000000000000000001:range:1:chunk:1"
    assert orjson.loads(last.body)["chunk"] == {"index": 1, "last": True}
    assert first.routing_key == "post.created"


def test_a_job_message_id_names_the_post_id_it_is_given_whatever_it_is() -> None:
    # The typed id encoding belongs to the producer (handlers/ids.py): the job carries its string.
    post_id = encode_post_id(42)
    j = decode_job(encode_job(job(post_id=post_id, head=encode_head(post_id, "u1", None, "", None))))
    assert (
        RangeChunkEncoder(j.post_id, j.head, j.range_index, j.range_count).message(["f"], 0, True).message_id
        == f"post:{post_id}:range:1:chunk:0"
    )
    assert post_id != "42"


def _body(**changes: Any) -> bytes:
    doc = orjson.loads(encode_job(job()))
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = doc
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return orjson.dumps(doc)


DELETE = object()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        _body(schema=2),
        _body(kind="post.liked"),
        _body(lane="fast"),
        _body(post_id=""),
        _body(author_id=7),
        _body(range__index=True),
        _body(range__count=0),
        _body(range__until=5),
        _body(range=None),
        _body(head__post__likes=1),
        _body(head__post__text=None),
        _body(head__author__version=-1),
        _body(head__author__version=True),
        _body(head__author__avatar_url=DELETE),
        _body(head__extra=1),
        _body(head=DELETE),
    ],
)
def test_a_job_that_breaks_the_contract_is_refused_by_the_decoder_and_the_schema(body: bytes) -> None:
    with pytest.raises(InvalidJob):
        decode_job(body)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    assert list(JOB.iter_errors(doc)) != []


def test_an_empty_range_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="empty follower range"):
        FollowerRange("b", "a")
    assert "b" in FollowerRange("a", "b") and "a" not in FollowerRange("a", "b")
    assert 5 not in FollowerRange()


@pytest.mark.parametrize(
    "body",
    [
        _body(range__index=3),  # not below count
        _body(range__after="f30"),  # after >= until: an empty range
        _body(head__post__id="other"),  # the head must be this post's
        _body(head__post__author_id="u2"),
        _body(head__author__user_id="u2"),
    ],
)
def test_what_json_schema_cannot_say_across_fields_the_decoder_checks(body: bytes) -> None:
    assert list(JOB.iter_errors(orjson.loads(body))) == []  # valid field by field
    with pytest.raises(InvalidJob):
        decode_job(body)
