"""Post ids in messages: one text per distinct _id whatever its BSON type, stable on replay."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp

from handlers.events import NewPost
from handlers.ids import decode_post_id, encode_post_id
from tests.harness import chunk_of

OID = ObjectId("65f0a1b2c3d4e5f6a7b8c9d0")

# Every _id below is a distinct MongoDB _id; several render alike under str(), the old encoding.
DISTINCT_IDS: list[Any] = [
    "777",
    777,
    "~int:777",
    "~str:777",
    "~",
    "",
    "int:777",
    OID,
    str(OID),  # a string that looks like an ObjectId
    str(OID).upper(),
    "~" + str(OID),
    True,
    "True",
    "true",
    "~bool:true",
    1.5,
    "1.5",
    -0.0,
    0.0,  # MongoDB treats -0.0 and 0.0 as one _id, but they must not be told apart by chance either
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "12345678-1234-5678-1234-567812345678",
    Decimal128("1.50"),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    Binary(b"\x01\x02", 0),
    Binary(b"\x01\x02", 5),
    Timestamp(5, 1),
    MinKey(),
    MaxKey(),
    "p:1:chunk:2",
    "a:b",
    "hé~ll:o",
]


def test_every_distinct_id_gets_a_distinct_text() -> None:
    texts = [encode_post_id(v) for v in DISTINCT_IDS]
    clashes = [
        (a, b)
        for (a, ta), (b, tb) in itertools.combinations(zip(DISTINCT_IDS, texts, strict=True), 2)
        if ta == tb
    ]
    assert clashes == []


def test_the_int_and_the_string_777_are_two_posts_in_every_message_field() -> None:
    # Given two posts whose _ids print alike: int 777 and string "777"
    a = chunk_of(NewPost(777, "u1", "x", None), None, ["f"], 0, last=True)
    b = chunk_of(NewPost("777", "u1", "x", None), None, ["f"], 0, last=True)
    # Then their message ids, correlation ids and post ids differ
    assert a.message_id != b.message_id
    assert a.correlation_id != b.correlation_id
    assert (a.message_id, b.message_id) == ("post:~int:777:range:0:chunk:0", "post:777:range:0:chunk:0")


@pytest.mark.parametrize("value", DISTINCT_IDS, ids=repr)
def test_decoding_gives_back_the_kind_and_form(value: Any) -> None:
    kind, form = decode_post_id(encode_post_id(value))
    # Strings come back as strings whether or not they were escaped, ObjectIds as ObjectIds
    if isinstance(value, str):
        assert (kind, form) == ("str", value)
    elif isinstance(value, ObjectId):
        assert (kind, form) == ("objectid", str(value))
    else:
        assert kind not in ("str", "objectid")


def test_common_ids_are_unchanged_from_before() -> None:
    # ObjectIds and ordinary string ids keep the text they always had: no churn on upgrade
    assert encode_post_id(OID) == "65f0a1b2c3d4e5f6a7b8c9d0"
    for s in (
        "p1",
        "post-42",
        "2024/05/01:abc",
        "65F0A1B2C3D4E5F6A7B8C9D0",
        "12345678-1234-5678-1234-567812345678",
    ):
        assert encode_post_id(s) == s


def test_the_encoding_is_deterministic_across_equal_values() -> None:
    # A replay re-reads the _id from the oplog: an equal value (a new object) gives the same text
    assert encode_post_id(Int64(777)) == encode_post_id(777) == "~int:777"
    assert encode_post_id(ObjectId(str(OID))) == encode_post_id(OID)
    assert encode_post_id(uuid.UUID(int=5)) == encode_post_id(uuid.UUID(int=5))


def test_random_strings_never_collide_with_typed_ids() -> None:
    # A property check without hypothesis: strings built from the characters that matter
    alphabet = ["~", ":", "i", "n", "t", "7", "s", "r", "a", "0", "f"]
    seen: dict[str, Any] = {}
    values: list[Any] = ["".join(p) for n in range(4) for p in itertools.product(alphabet, repeat=n)]
    values += [7, 77, 777, 0, -7, True, False, 7.0, 0.5, OID, str(OID)]
    for v in values:
        text = encode_post_id(v)
        assert seen.setdefault(text, v) is v or (type(seen[text]), seen[text]) == (type(v), v), (
            v,
            seen[text],
        )
