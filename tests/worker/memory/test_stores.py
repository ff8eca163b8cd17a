"""The in-memory post store keeps the same version guard as the MongoDB one."""

from __future__ import annotations

from enrichment.snapshot import AuthorSnapshot
from worker.memory.db import MemoryDatabase
from worker.memory.stores import MemoryPostStore


def snap(user_id: str, version: int) -> AuthorSnapshot:
    return AuthorSnapshot(user_id, user_id, f"{user_id} v{version}", None, version)


def versions(db: MemoryDatabase) -> dict[str, int | None]:
    return {
        post_id: (doc.get("author_snapshot") or {}).get("version")
        for post_id, doc in db.collection("posts").items()
    }


async def test_rewrite_touches_only_that_authors_older_posts() -> None:
    # Given alice's posts with no, an older and a newer snapshot, and a post of bob
    db = MemoryDatabase()
    store = MemoryPostStore(db)
    db.insert("posts", {"_id": "absent", "author_id": "alice"})
    db.insert("posts", {"_id": "older", "author_id": "alice", "author_snapshot": snap("alice", 1).to_dict()})
    db.insert("posts", {"_id": "newer", "author_id": "alice", "author_snapshot": snap("alice", 5).to_dict()})
    db.insert("posts", {"_id": "bobs", "author_id": "bob"})
    # When version 3 is rewritten
    changed = await store.rewrite_author_snapshot(snap("alice", 3))
    # Then only the absent and older ones changed
    assert changed == 2
    assert versions(db) == {"absent": 3, "older": 3, "newer": 5, "bobs": None}
    assert await store.rewrite_author_snapshot(snap("alice", 3)) == 0


async def test_set_snapshots_is_version_guarded_and_checks_the_author() -> None:
    db = MemoryDatabase()
    store = MemoryPostStore(db)
    db.insert("posts", {"_id": "p1", "author_id": "alice"})
    db.insert("posts", {"_id": "p2", "author_id": "alice", "author_snapshot": snap("alice", 4).to_dict()})
    db.insert("posts", {"_id": "p3", "author_id": "bob"})
    changed = await store.set_snapshots(
        [
            ("p1", snap("alice", 2)),
            ("p2", snap("alice", 2)),
            ("p3", snap("alice", 2)),
            ("gone", snap("alice", 2)),
        ]
    )
    assert changed == 1
    assert versions(db) == {"p1": 2, "p2": 4, "p3": None}


async def test_rewrite_reaches_posts_inserted_after_a_post_was_deleted() -> None:
    # Given three posts of alice, indexed by a first cascade
    db = MemoryDatabase()
    store = MemoryPostStore(db)
    for i in range(3):
        db.insert("posts", {"_id": f"p{i}", "author_id": "alice"})
    assert await store.rewrite_author_snapshot(snap("alice", 1)) == 3
    # When one post is deleted and two more are written
    db.delete("posts", "p0")
    db.insert("posts", {"_id": "p3", "author_id": "alice"})
    db.insert("posts", {"_id": "p4", "author_id": "alice"})
    # Then the next cascade reaches every remaining post
    assert await store.rewrite_author_snapshot(snap("alice", 2)) == 4
    assert versions(db) == {"p1": 2, "p2": 2, "p3": 2, "p4": 2}
