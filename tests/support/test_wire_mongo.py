"""Tests for the WireMongo wire-protocol stand-in, driven by PyMongo's AsyncMongoClient."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure

from tests.support.wire_mongo import WireMongo

pytestmark = pytest.mark.timeout(20)

DB = "app"


@pytest.fixture
def wm() -> Iterator[WireMongo]:
    with WireMongo() as server:
        yield server


def _client(uri: str) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=2000)


@pytest.mark.asyncio
@pytest.mark.parametrize("direct", [False, True])
async def test_handshake_both_uri_forms(wm: WireMongo, direct: bool) -> None:
    uri = wm.direct_uri if direct else wm.uri
    assert uri.startswith("mongodb://127.0.0.1:")
    async with _client(uri) as client:
        assert (await client.admin.command("ping"))["ok"] == 1
        hello = await client.admin.command("hello")
        assert hello["isWritablePrimary"] is True
        assert hello["maxWireVersion"] == 21
        assert hello["setName"] == "rs0"


@pytest.mark.asyncio
async def test_insert_find_round_trip(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        coll = client[DB]["posts"]
        res = await coll.insert_one({"_id": "p1", "author_id": "u1", "text": "hi"})
        assert res.inserted_id == "p1"
        await coll.insert_many([{"_id": "p2", "author_id": "u2"}, {"_id": "p3", "author_id": "u1"}])
        docs = await coll.find({"author_id": "u1"}, {"text": 0}).sort("_id", -1).to_list()
        assert docs == [{"_id": "p3", "author_id": "u1"}, {"_id": "p1", "author_id": "u1"}]
        assert await coll.count_documents({}) == 3
        assert wm.find(DB, "posts", {"_id": "p2"}) == [{"_id": "p2", "author_id": "u2"}]
        with pytest.raises(DuplicateKeyError) as exc:
            await coll.insert_one({"_id": "p1"})
        assert exc.value.code == 11000


@pytest.mark.asyncio
async def test_find_batch_size_forces_get_more(wm: WireMongo) -> None:
    for i in range(7):
        wm.insert(DB, "posts", {"_id": i})
    async with _client(wm.uri) as client:
        docs = await client[DB]["posts"].find().sort("_id", 1).batch_size(3).to_list()
        assert [d["_id"] for d in docs] == list(range(7))
        assert wm.command_count("getMore") == 2
        limited = await client[DB]["posts"].find().skip(2).limit(3).batch_size(2).to_list()
        assert [d["_id"] for d in limited] == [2, 3, 4]


@pytest.mark.asyncio
async def test_update_many_with_or_filter_reports_modified(wm: WireMongo) -> None:
    wm.insert(DB, "posts", {"_id": 1, "author_id": "u1"})
    wm.insert(DB, "posts", {"_id": 2, "author_id": "u1", "author_snapshot": {"version": 1, "name": "a"}})
    wm.insert(DB, "posts", {"_id": 3, "author_id": "u1", "author_snapshot": {"version": 5, "name": "b"}})
    wm.insert(DB, "posts", {"_id": 4, "author_id": "u2"})
    flt = {
        "author_id": "u1",
        "$or": [{"author_snapshot": {"$exists": False}}, {"author_snapshot.version": {"$lt": 3}}],
    }
    async with _client(wm.uri) as client:
        res = await client[DB]["posts"].update_many(flt, {"$set": {"author_snapshot": {"version": 3}}})
        assert (res.matched_count, res.modified_count) == (2, 2)
        again = await client[DB]["posts"].update_many(flt, {"$set": {"author_snapshot": {"version": 3}}})
        assert (again.matched_count, again.modified_count) == (0, 0)
    versions = {d["_id"]: d.get("author_snapshot", {}).get("version") for d in wm.find(DB, "posts")}
    assert versions == {1: 3, 2: 3, 3: 5, 4: None}
    updates = [e for e in wm.change_events() if e["operationType"] == "update"]
    assert [e["documentKey"]["_id"] for e in updates] == [1, 2]
    assert updates[0]["updateDescription"]["updatedFields"] == {"author_snapshot": {"version": 3}}
    assert updates[1]["updateDescription"] == {
        "updatedFields": {"author_snapshot.version": 3},
        "removedFields": ["author_snapshot.name"],
        "truncatedArrays": [],
    }


@pytest.mark.asyncio
async def test_find_one_and_update_upsert(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        coll = client[DB]["counters"]
        doc = await coll.find_one_and_update(
            {"_id": "c"}, {"$inc": {"n": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        assert doc == {"_id": "c", "n": 1}
        before = await coll.find_one_and_update({"_id": "c"}, {"$inc": {"n": 1}}, upsert=True)
        assert before == {"_id": "c", "n": 1}
        assert await coll.find_one_and_update({"_id": "zz"}, {"$set": {"n": 1}}) is None
        replaced = await coll.find_one_and_replace(
            {"_id": "c"}, {"n": 10}, projection={"_id": 0}, return_document=ReturnDocument.AFTER
        )
        assert replaced == {"n": 10}
        deleted = await coll.find_one_and_delete({"_id": "c"})
        assert deleted == {"_id": "c", "n": 10}
    ops = [e["operationType"] for e in wm.change_events()]
    assert ops == ["insert", "update", "replace", "delete"]


@pytest.mark.asyncio
async def test_change_stream_lookup_pbrt_and_resume_after(wm: WireMongo) -> None:
    wm.insert(DB, "profiles", {"_id": "u1", "name": "Ann", "version": 1})
    async with _client(wm.uri) as client:
        coll = client[DB]["profiles"]
        async with await coll.watch(full_document="updateLookup", max_await_time_ms=200) as s:
            wm.insert(DB, "profiles", {"_id": "u2", "name": "Bob", "version": 1})
            profiles = wm.db(DB)
            profiles.update_one("profiles", {"_id": "u1"}, {"$set": {"name": "Anna"}, "$inc": {"version": 1}})
            wm.insert(DB, "other", {"_id": "ignored"})
            ins = await s.try_next()
            assert ins is not None
            assert ins["operationType"] == "insert"
            assert ins["ns"] == {"db": DB, "coll": "profiles"}
            assert ins["fullDocument"] == {"_id": "u2", "name": "Bob", "version": 1}
            upd = await s.try_next()
            assert upd is not None
            assert upd["operationType"] == "update"
            assert upd["documentKey"] == {"_id": "u1"}
            assert upd["updateDescription"]["updatedFields"] == {"name": "Anna", "version": 2}
            assert upd["fullDocument"] == {"_id": "u1", "name": "Anna", "version": 2}
            assert upd["_id"]["_data"] > ins["_id"]["_data"]
            assert await s.try_next() is None  # idle getMore: waits max_await_time_ms
            assert s.resume_token is not None
            idle_token = s.resume_token
            assert idle_token["_data"] >= upd["_id"]["_data"]
        wm.db(DB).delete_one("profiles", {"_id": "u2"})
        wm.db(DB).replace_one("profiles", {"_id": "u1"}, {"name": "A", "version": 3})
        async with await coll.watch(resume_after=idle_token, max_await_time_ms=100) as s2:
            got = [await s2.try_next(), await s2.try_next(), await s2.try_next()]
        assert [g and g["operationType"] for g in got] == ["delete", "replace", None]
        assert got[1] is not None
        assert got[1]["fullDocument"] == {"_id": "u1", "name": "A", "version": 3}
        # resuming after the insert replays exactly the events after it
        async with await coll.watch(resume_after=ins["_id"], max_await_time_ms=100) as s3:
            first = await s3.try_next()
        assert first is not None
        assert first["_id"] == upd["_id"]


@pytest.mark.asyncio
async def test_change_stream_empty_log_start_token_is_resumable(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        coll = client[DB]["posts"]
        async with await coll.watch(max_await_time_ms=50) as s:
            assert await s.try_next() is None
            token = s.resume_token
        assert token is not None
        wm.insert(DB, "posts", {"_id": 1})
        async with await coll.watch(resume_after=token, max_await_time_ms=50) as s:
            change = await s.try_next()
        assert change is not None
        assert change["documentKey"] == {"_id": 1}


@pytest.mark.asyncio
async def test_getmore_waits_and_wakes_on_write(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        coll = client[DB]["posts"]
        async with await coll.watch(max_await_time_ms=5000) as s:
            # write through the wire (second pooled connection) while the getMore is parked
            task = asyncio.create_task(s.try_next())
            await asyncio.sleep(0.1)
            await coll.insert_one({"_id": "w"})
            change = await asyncio.wait_for(task, 2)
        assert change is not None
        assert change["documentKey"] == {"_id": "w"}


@pytest.mark.asyncio
async def test_match_operation_type_stage(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        pipeline = [{"$match": {"operationType": {"$in": ["insert", "replace"]}}}]
        async with await client[DB]["posts"].watch(pipeline, max_await_time_ms=100) as s:
            wm.insert(DB, "posts", {"_id": 1, "n": 0})
            wm.update_one(DB, "posts", {"_id": 1}, {"$set": {"n": 1}})
            wm.replace_one(DB, "posts", {"_id": 1}, {"n": 2})
            a, b, c = await s.try_next(), await s.try_next(), await s.try_next()
        assert [x and x["operationType"] for x in (a, b, c)] == ["insert", "replace", None]
        with pytest.raises(OperationFailure):  # a stage not emulated is refused, not ignored
            await client[DB]["posts"].watch([{"$group": {"_id": None}}])


@pytest.mark.asyncio
async def test_resumable_getmore_error_is_transparent(wm: WireMongo) -> None:
    async with _client(wm.uri) as client, await client[DB]["posts"].watch(max_await_time_ms=100) as s:
        wm.insert(DB, "posts", {"_id": "a"})
        first = await s.try_next()
        assert first is not None
        assert first["documentKey"] == {"_id": "a"}
        wm.fail_next("getMore", 6, labels=["ResumableChangeStreamError"])
        wm.insert(DB, "posts", {"_id": "b"})
        wm.insert(DB, "posts", {"_id": "c"})
        aggregates = wm.command_count("aggregate")
        got = [await s.try_next(), await s.try_next()]
        assert [g and g["documentKey"]["_id"] for g in got] == ["b", "c"]
        assert wm.command_count("aggregate") == aggregates + 1  # the driver resumed
        # a dropped connection is resumable too
        wm.hangup_next("getMore")
        wm.insert(DB, "posts", {"_id": "d"})
        d = await s.try_next()
        assert d is not None
        assert d["documentKey"] == {"_id": "d"}
        assert await s.try_next() is None


@pytest.mark.asyncio
async def test_history_lost_286_reaches_caller(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        coll = client[DB]["posts"]
        with pytest.raises(OperationFailure) as exc:
            await coll.watch(resume_after={"_data": "00DEADBEEF"})
        assert exc.value.code == 286
        async with await coll.watch(max_await_time_ms=50) as s:
            wm.fail_next("getMore", 286, errmsg="history lost")
            with pytest.raises(OperationFailure) as exc2:
                await s.try_next()
            assert exc2.value.code == 286
            assert not s.alive
        wm.fail_next("aggregate", 280)
        with pytest.raises(OperationFailure) as exc3:
            await coll.watch()
        assert exc3.value.code == 280


@pytest.mark.asyncio
async def test_invalidate(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        coll = client[DB]["posts"]
        async with await coll.watch(max_await_time_ms=50) as s:
            wm.invalidate(DB, "posts")
            ev = await s.try_next()
            assert ev is not None
            assert ev["operationType"] == "invalidate"
            assert not s.alive
        with pytest.raises(OperationFailure) as exc:
            await coll.watch(resume_after=ev["_id"])
        assert exc.value.code == 260
        wm.insert(DB, "posts", {"_id": 1})
        async with await coll.watch(start_after=ev["_id"], max_await_time_ms=50) as s2:
            after = await s2.try_next()
        assert after is not None
        assert after["operationType"] == "insert"


def test_restart_keeps_data_and_port() -> None:
    with WireMongo() as wm:
        wm.insert(DB, "posts", {"_id": 1})
        uri = wm.uri
        wm.stop()
        assert wm.start() == uri
        assert wm.find(DB, "posts") == [{"_id": 1}]


@pytest.mark.asyncio
async def test_stream_survives_stand_in_restart(wm: WireMongo) -> None:
    async with _client(wm.uri) as client, await client[DB]["posts"].watch(max_await_time_ms=300) as s:
        wm.insert(DB, "posts", {"_id": 1})
        first = await s.try_next()
        assert first is not None
        wm.stop()  # connections dropped, cursors forgotten; data and change log kept
        wm.start()
        wm.insert(DB, "posts", {"_id": 2})
        change = None
        for _ in range(10):  # the driver rediscovers the server, then resumes after event 1
            try:
                change = await s.try_next()
            except ConnectionFailure:
                continue
            if change is not None:
                break
        assert change is not None
        assert change["documentKey"] == {"_id": 2}


@pytest.mark.asyncio
async def test_survives_sigkilled_client_with_parked_getmore(wm: WireMongo) -> None:
    script = (
        "import sys\n"
        "from pymongo import MongoClient\n"
        "c = MongoClient(sys.argv[1])\n"
        "s = c.app.posts.watch(max_await_time_ms=10000)\n"
        "print('ready', flush=True)\n"
        "s.try_next()\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, wm.uri, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
        for _ in range(200):
            if wm.command_count("getMore"):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the getMore is parked in a server thread now
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    wm.insert(DB, "posts", {"_id": "after-kill"})  # wakes the parked getMore: reply to a dead peer
    async with _client(wm.uri) as client:
        assert await client[DB]["posts"].find_one({"_id": "after-kill"}) == {"_id": "after-kill"}


# ---------------------------------------------------------------- stages and the 16 MB limit
SMALL_LIMIT = 2_000  # bytes: stands in for 16 MB, so the tests stay fast


@pytest.mark.asyncio
async def test_project_keeps_the_listed_fields_and_the_token(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        coll = client[DB]["posts"]
        pipeline = [{"$project": {"_id": 1, "operationType": 1, "fullDocument.a": 1, "fullDocument.n.x": 1}}]
        async with await coll.watch(pipeline, max_await_time_ms=100) as stream:
            await coll.insert_one({"_id": 1, "a": "kept", "big": "dropped", "n": {"x": 1, "y": 2}})
            event = await stream.try_next()
            assert event is not None
            assert event == {
                "_id": event["_id"],
                "operationType": "insert",
                "fullDocument": {"a": "kept", "n": {"x": 1}},
            }
            assert stream.resume_token == event["_id"]


@pytest.mark.asyncio
async def test_a_pipeline_that_changes_the_token_fails_with_280(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        stream = await client[DB]["posts"].watch([{"$project": {"_id": 0, "operationType": 1}}])
        wm.insert(DB, "posts", {"_id": 1})
        with pytest.raises(OperationFailure) as exc:
            await stream.try_next()
        assert exc.value.code == 280
        await stream.close()


@pytest.mark.asyncio
async def test_an_event_over_the_limit_fails_the_stream_with_10334_each_time(wm: WireMongo) -> None:
    wm.max_event_bytes = SMALL_LIMIT
    async with _client(wm.uri) as client:
        coll = client[DB]["posts"]
        async with await coll.watch(max_await_time_ms=100) as stream:
            token = stream.resume_token
            await coll.insert_one({"_id": "big", "text": "x" * SMALL_LIMIT})
            with pytest.raises(OperationFailure) as exc:
                await stream.try_next()
            assert exc.value.code == 10334
        # Resuming at the same place meets the same event again
        with pytest.raises(OperationFailure) as again:
            await coll.watch(resume_after=token)
        assert again.value.code == 10334


@pytest.mark.asyncio
async def test_split_stage_sends_fragments_and_resumes_after_any_of_them(wm: WireMongo) -> None:
    wm.max_event_bytes = SMALL_LIMIT
    wm.insert(DB, "profiles", {"_id": "big"})
    async with _client(wm.uri) as client:
        coll = client[DB]["profiles"]
        split = [{"$changeStreamSplitLargeEvent": {}}]
        opts: dict[str, Any] = {"full_document": "updateLookup", "max_await_time_ms": 100, "batch_size": 1}
        async with await coll.watch(split, **opts) as stream:
            start = stream.resume_token
            # An update whose diff and looked-up document are each under the limit, not together
            await coll.update_one({"_id": "big"}, {"$set": {"bio": "b" * 1500}})
            await coll.insert_one({"_id": "small"})
            got = [await stream.try_next() for _ in range(3)]
        fragments = [e for e in got if e is not None]
        # Then the big event comes as fragments, each under the limit, each with its own token
        assert [f.get("splitEvent") for f in fragments[:2]] == [
            {"fragment": 1, "of": 2},
            {"fragment": 2, "of": 2},
        ]
        assert len({str(f["_id"]) for f in fragments}) == 3
        assert "splitEvent" not in fragments[2] and fragments[2]["documentKey"] == {"_id": "small"}
        merged: dict[str, Any] = {}
        for f in fragments[:2]:
            merged.update(f)
        assert merged["fullDocument"] == {"_id": "big", "bio": "b" * 1500}
        assert merged["updateDescription"]["updatedFields"] == {"bio": "b" * 1500}
        assert merged["operationType"] == "update"
        # and resuming after the first fragment continues with the second, after the last with the next event
        for after, first in ((fragments[0], {"fragment": 2, "of": 2}), (fragments[1], None)):
            async with await coll.watch(split, resume_after=after["_id"], **opts) as again:
                nxt = await again.try_next()
                assert nxt is not None and nxt.get("splitEvent") == first
        # and the split stage must be the last one
        with pytest.raises(OperationFailure):
            await coll.watch([*split, {"$match": {}}], resume_after=start)


@pytest.mark.asyncio
async def test_set_stage_evaluates_bson_size_and_remove(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        coll = client[DB]["posts"]
        size = {"$ifNull": [{"$bsonSize": "$fullDocument"}, 0]}
        over = {"$gt": [size, 100]}
        stage = {
            "$set": {
                "oversize": {"$cond": [over, size, "$$REMOVE"]},
                "fullDocument": {"$cond": [over, "$$REMOVE", "$fullDocument"]},
            }
        }
        async with await coll.watch([stage], max_await_time_ms=100) as stream:
            await coll.insert_one({"_id": "small"})
            await coll.insert_one({"_id": "big", "text": "x" * 200})
            small, big = await stream.try_next(), await stream.try_next()
        assert small is not None and big is not None
        assert small["fullDocument"] == {"_id": "small"} and "oversize" not in small
        assert "fullDocument" not in big and big["oversize"] > 200


@pytest.mark.asyncio
async def test_pre_images_follow_the_collection_option_and_list_collections_shows_it(wm: WireMongo) -> None:
    # Given "posts" created through the driver with pre-images, "drafts" without, then turned on
    async with _client(wm.uri) as client:
        db = client[DB]
        await db.create_collection("posts", changeStreamPreAndPostImages={"enabled": True})
        await db.create_collection("drafts")
        wm.insert(DB, "drafts", {"_id": "d1", "author_id": "u1"})
        wm.delete_one(DB, "drafts", {"_id": "d1"})  # before pre-images: none recorded
        await db.command("collMod", "drafts", changeStreamPreAndPostImages={"enabled": True})
        wm.insert(DB, "drafts", {"_id": "d2", "author_id": "u2"})
        wm.delete_one(DB, "drafts", {"_id": "d2"})
        # Then listCollections shows the option on both
        infos = {c["name"]: c["options"] async for c in await db.list_collections()}
        assert infos["posts"] == {"changeStreamPreAndPostImages": {"enabled": True}}
        assert infos["drafts"] == {"changeStreamPreAndPostImages": {"enabled": True}}
        # When a stream asks for pre-images when available
        async with await db["posts"].watch(
            full_document_before_change="whenAvailable", max_await_time_ms=100
        ) as s:
            wm.insert(DB, "posts", {"_id": "p1", "author_id": "u1", "text": "a"})
            wm.update_one(DB, "posts", {"_id": "p1"}, {"$set": {"text": "b"}})
            wm.delete_one(DB, "posts", {"_id": "p1"})
            ins, upd, rem = await s.try_next(), await s.try_next(), await s.try_next()
        # Then updates and deletes carry the document as it was before them; inserts none
        assert ins is not None and "fullDocumentBeforeChange" not in ins
        assert upd is not None and upd["fullDocumentBeforeChange"]["text"] == "a"
        assert rem is not None and rem["fullDocumentBeforeChange"] == {
            "_id": "p1",
            "author_id": "u1",
            "text": "b",
        }
        # and on drafts only the delete made after the option was turned on has one
        async with await db["drafts"].watch(
            full_document_before_change="whenAvailable", start_at_operation_time=ts_of_first(wm)
        ) as s:
            deletes = [
                e for e in [await s.try_next() for _ in range(4)] if e and e["operationType"] == "delete"
            ]
        assert [d["fullDocumentBeforeChange"] for d in deletes] == [None, {"_id": "d2", "author_id": "u2"}]


def ts_of_first(wm: WireMongo) -> Any:
    return wm.change_events()[0]["clusterTime"]


@pytest.mark.asyncio
async def test_required_pre_image_missing_fails_with_47_each_time(wm: WireMongo) -> None:
    # Given a delete on a collection that records no pre-images
    wm.insert(DB, "posts", {"_id": "p1", "author_id": "u1"})
    async with _client(wm.uri) as client:
        coll = client[DB]["posts"]
        async with await coll.watch(full_document_before_change="required", max_await_time_ms=100) as s:
            wm.delete_one(DB, "posts", {"_id": "p1"})
            # When the stream meets it, Then it fails with NoMatchingDocument, as MongoDB 6.0+ does
            with pytest.raises(OperationFailure) as exc:
                await s.try_next()
        assert exc.value.code == 47
        assert "pre-image was not found" in str(exc.value)
        # and a stream resumed before it meets it again
        with pytest.raises(OperationFailure) as again:
            await coll.watch(full_document_before_change="required", start_at_operation_time=ts_of_first(wm))
        assert again.value.code == 47
        # while one without pre-images reads past it
        async with await coll.watch(start_at_operation_time=ts_of_first(wm), max_await_time_ms=100) as s:
            ops = [(await s.try_next() or {}).get("operationType") for _ in range(2)]
        assert ops == ["insert", "delete"]


@pytest.mark.asyncio
async def test_coll_mod_on_a_missing_collection_and_a_bad_option_are_refused(wm: WireMongo) -> None:
    async with _client(wm.uri) as client:
        with pytest.raises(OperationFailure) as missing:
            await client[DB].command("collMod", "nope", changeStreamPreAndPostImages={"enabled": True})
        assert missing.value.code == 26
        await client[DB].create_collection("posts")
        with pytest.raises(OperationFailure) as bad:
            await client[DB].command("collMod", "posts", changeStreamPreAndPostImages=True)
        assert bad.value.code == 2
