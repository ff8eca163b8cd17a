"""Parsing and validating change events against the contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId, Timestamp

from enrichment.errors import InvalidEvent
from enrichment.snapshot import AuthorSnapshot
from handlers.events import ChangeEvent, parse_new_post, parse_profile_change

TOKEN = {"_data": "820000000000000001"}
MAX = 1_000


def event(stream: str = "posts", **raw: Any) -> ChangeEvent:
    return ChangeEvent.from_raw(stream, {"_id": TOKEN, **raw})


def post_insert(**doc: Any) -> ChangeEvent:
    full = {"_id": "p1", "author_id": "alice", "text": "hello", **doc}
    return event(operationType="insert", fullDocument=full)


def profile(**fields: Any) -> dict[str, Any]:
    return {
        "_id": "alice",
        "username": "alice",
        "display_name": "Alice",
        "avatar_url": None,
        "bio": "",
        "version": 3,
        **fields,
    }


def profile_update(updated: dict[str, Any], removed: list[str] | None = None, **doc: Any) -> ChangeEvent:
    return event(
        "profiles",
        operationType="update",
        updateDescription={"updatedFields": updated, "removedFields": removed or []},
        fullDocument=profile(**doc),
    )


# --- ChangeEvent ------------------------------------------------------------------------


def test_from_raw_requires_a_resume_token() -> None:
    with pytest.raises(InvalidEvent, match="resume token"):
        ChangeEvent.from_raw("posts", {"operationType": "insert", "fullDocument": {}})


def test_from_raw_keeps_token_op_and_cluster_time() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    ev = ChangeEvent.from_raw(
        "posts", {"_id": TOKEN, "operationType": "insert", "clusterTime": Timestamp(when, 1)}
    )
    assert ev.token == TOKEN
    assert ev.op == "insert"
    assert ev.cluster_time == when
    assert ev.full_document is None


# --- parse_new_post ---------------------------------------------------------------------


def test_a_valid_post_insert_is_parsed() -> None:
    post = parse_new_post(post_insert(created_at="2024-05-01T12:00:00Z"), MAX)
    assert post.post_id == "p1"
    assert post.author_id == "alice"
    assert post.text == "hello"
    assert post.created_at == "2024-05-01T12:00:00Z"


def test_an_object_id_post_id_is_rendered_as_its_hex() -> None:
    oid = ObjectId()
    post = parse_new_post(post_insert(_id=oid), MAX)
    assert post.post_id == oid
    assert post.id_str == str(oid)


def test_a_datetime_created_at_becomes_an_iso_string() -> None:
    when = datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)
    post = parse_new_post(post_insert(created_at=when), MAX)
    assert post.created_at == "2024-05-01T12:30:15+00:00"


def test_missing_text_means_empty_text_and_missing_created_at_is_none() -> None:
    ev = event(operationType="insert", fullDocument={"_id": "p1", "author_id": "alice"})
    post = parse_new_post(ev, MAX)
    assert post.text == ""
    assert post.created_at is None


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        pytest.param({"author_id": None}, "author_id", id="author-none"),
        pytest.param({"author_id": ""}, "author_id", id="author-empty"),
        pytest.param({"author_id": 42}, "author_id", id="author-int"),
        pytest.param({"text": 42}, "text", id="text-int"),
        pytest.param({"text": ["a"]}, "text", id="text-list"),
        pytest.param({"created_at": 1714564800}, "created_at", id="created-at-int"),
        pytest.param({"_id": None}, "_id", id="id-none"),
        pytest.param({"_id": {"nested": 1}}, "_id", id="id-dict"),
    ],
)
def test_malformed_posts_are_invalid(doc: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_new_post(post_insert(**doc), MAX)


def test_a_post_without_author_id_is_invalid() -> None:
    ev = event(operationType="insert", fullDocument={"_id": "p1", "text": "x"})
    with pytest.raises(InvalidEvent, match="author_id"):
        parse_new_post(ev, MAX)


def test_text_size_is_measured_in_utf8_bytes() -> None:
    # Given a limit of 10 bytes
    # When the text is exactly 10 bytes, it is accepted
    assert parse_new_post(post_insert(text="a" * 10), 10).text == "a" * 10
    assert parse_new_post(post_insert(text="é" * 5), 10).text == "é" * 5
    # When it is 6 characters but 12 bytes, it is too large
    with pytest.raises(InvalidEvent, match="larger than 10 bytes"):
        parse_new_post(post_insert(text="é" * 6), 10)
    with pytest.raises(InvalidEvent, match="larger than 10 bytes"):
        parse_new_post(post_insert(text="a" * 11), 10)


@pytest.mark.parametrize("op", ["update", "replace", "delete", "invalidate", ""])
def test_non_insert_operations_are_invalid_on_the_posts_stream(op: str) -> None:
    ev = event(operationType=op, fullDocument={"_id": "p1", "author_id": "alice", "text": "x"})
    with pytest.raises(InvalidEvent, match="operationType"):
        parse_new_post(ev, MAX)


@pytest.mark.parametrize("full", [None, "not a document", 7])
def test_an_insert_without_a_full_document_is_invalid(full: Any) -> None:
    ev = event(operationType="insert", fullDocument=full)
    with pytest.raises(InvalidEvent, match="fullDocument"):
        parse_new_post(ev, MAX)


def test_an_insert_with_no_full_document_key_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="fullDocument"):
        parse_new_post(event(operationType="insert"), MAX)


# --- parse_profile_change ---------------------------------------------------------------


def test_an_update_touching_display_name_is_a_change() -> None:
    change = parse_profile_change(profile_update({"display_name": "Alice B."}, display_name="Alice B."))
    assert change is not None
    assert change.snapshot == AuthorSnapshot("alice", "alice", "Alice B.", None, 3)


def test_an_update_touching_only_bio_is_ignored() -> None:
    assert parse_profile_change(profile_update({"bio": "new bio", "version": 4}, version=4)) is None


def test_a_dotted_path_under_a_display_field_counts() -> None:
    change = parse_profile_change(profile_update({"avatar_url.x": 1}, avatar_url="https://cdn/a.png"))
    assert change is not None
    assert change.snapshot.avatar_url == "https://cdn/a.png"


def test_a_dotted_path_under_another_field_does_not_count() -> None:
    assert parse_profile_change(profile_update({"settings.display_name": "x"})) is None


def test_removing_a_display_field_is_a_change() -> None:
    change = parse_profile_change(profile_update({}, removed=["display_name"], display_name=None))
    assert change is not None
    # display_name falls back to the username
    assert change.snapshot.display_name == "alice"


def test_a_replace_is_a_change() -> None:
    ev = event("profiles", operationType="replace", fullDocument=profile(version=9))
    change = parse_profile_change(ev)
    assert change is not None
    assert change.snapshot.version == 9


def test_a_new_profile_is_a_change_so_earlier_posts_get_their_snapshot() -> None:
    ev = event("profiles", operationType="insert", fullDocument=profile(version=1))
    change = parse_profile_change(ev)
    assert change is not None
    assert change.snapshot.version == 1


@pytest.mark.parametrize("op", ["update", "replace"])
def test_a_change_whose_lookup_found_nothing_is_ignored(op: str) -> None:
    ev = event(
        "profiles",
        operationType=op,
        updateDescription={"updatedFields": {"display_name": "x"}, "removedFields": []},
        fullDocument=None,
    )
    assert parse_profile_change(ev) is None


@pytest.mark.parametrize("op", ["delete", "drop"])
def test_other_operations_are_ignored(op: str) -> None:
    assert parse_profile_change(event("profiles", operationType=op, fullDocument=profile())) is None


def test_an_update_without_update_description_is_invalid() -> None:
    ev = event("profiles", operationType="update", fullDocument=profile())
    with pytest.raises(InvalidEvent, match="updateDescription"):
        parse_profile_change(ev)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"version": "3"}, id="version-string"),
        pytest.param({"version": True}, id="version-bool"),
        pytest.param({"version": -1}, id="version-negative"),
        pytest.param({"version": None}, id="version-none"),
        pytest.param({"username": None}, id="username-none"),
        pytest.param({"display_name": 5}, id="display-name-int"),
        pytest.param({"avatar_url": 5}, id="avatar-int"),
        pytest.param({"_id": ""}, id="id-empty"),
    ],
)
def test_a_malformed_profile_is_invalid(fields: dict[str, Any]) -> None:
    ev = event("profiles", operationType="replace", fullDocument=profile(**fields))
    with pytest.raises(InvalidEvent):
        parse_profile_change(ev)
