"""L1: the bounded LRU with a TTL, a negative TTL and a per-user version floor."""

from __future__ import annotations

import pytest

from enrichment.memory import MemoryLayer
from enrichment.snapshot import AuthorSnapshot


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def snap(user_id: str, version: int) -> AuthorSnapshot:
    return AuthorSnapshot(user_id, user_id, f"{user_id} v{version}", None, version)


def layer(
    clock: FakeClock, max_entries: int = 100, ttl: float = 60.0, negative_ttl: float = 5.0
) -> MemoryLayer:
    return MemoryLayer(max_entries, ttl, negative_ttl, clock=clock)


def test_rejects_a_zero_bound() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryLayer(0, 60.0, 5.0)


def test_lru_evicts_the_least_recently_used_beyond_the_bound() -> None:
    # Given a layer bounded at 3 entries holding a, b, c
    clock = FakeClock()
    l1 = layer(clock, max_entries=3)
    for user in "abc":
        assert l1.put(user, snap(user, 1))
    # When a is read (most recent now) and d is added
    hits, _ = l1.get_many(["a"])
    assert set(hits) == {"a"}
    l1.put("d", snap("d", 1))
    # Then b, the least recently used, is gone and the size stays at the bound
    assert len(l1) == 3
    hits, misses = l1.get_many(["a", "b", "c", "d"])
    assert set(hits) == {"a", "c", "d"}
    assert misses == ["b"]


def test_a_put_refreshes_recency() -> None:
    # Given a full layer of a, b
    clock = FakeClock()
    l1 = layer(clock, max_entries=2)
    l1.put("a", snap("a", 1))
    l1.put("b", snap("b", 1))
    # When a is written again, then c is added
    l1.put("a", snap("a", 2))
    l1.put("c", snap("c", 1))
    # Then b (not a) was evicted
    hits, misses = l1.get_many(["a", "b", "c"])
    assert set(hits) == {"a", "c"}
    assert misses == ["b"]


def test_positive_entries_expire_after_the_ttl() -> None:
    # Given an entry stored with a 60 s TTL
    clock = FakeClock()
    l1 = layer(clock, ttl=60.0)
    l1.put("a", snap("a", 1))
    # When just under the TTL has passed, it is a hit
    clock.advance(59.9)
    hits, misses = l1.get_many(["a"])
    assert hits == {"a": snap("a", 1)}
    assert misses == []
    # When the TTL has fully passed, it is a miss
    clock.advance(0.1)
    hits, misses = l1.get_many(["a"])
    assert hits == {}
    assert misses == ["a"]


def test_negative_entries_use_the_negative_ttl() -> None:
    # Given a cached "no such user" and a real user, stored at the same time
    clock = FakeClock()
    l1 = layer(clock, ttl=60.0, negative_ttl=5.0)
    assert l1.put("ghost", None)
    l1.put("a", snap("a", 1))
    # When 4 s pass, the negative entry is a hit whose value is None
    clock.advance(4.0)
    hits, misses = l1.get_many(["ghost", "a"])
    assert hits == {"ghost": None, "a": snap("a", 1)}
    assert misses == []
    # When the negative TTL has passed, the negative entry expires but the positive one does not
    clock.advance(1.0)
    hits, misses = l1.get_many(["ghost", "a"])
    assert misses == ["ghost"]
    assert hits == {"a": snap("a", 1)}


def test_put_never_replaces_a_newer_version() -> None:
    # Given version 5 of a user
    clock = FakeClock()
    l1 = layer(clock)
    assert l1.put("a", snap("a", 5))
    # When an older version arrives (a slow fill)
    stored = l1.put("a", snap("a", 3))
    # Then it is refused and version 5 stays
    assert stored is False
    hits, _ = l1.get_many(["a"])
    assert hits["a"] is not None and hits["a"].version == 5
    # And a negative entry (version -1) cannot replace a real snapshot either
    assert l1.put("a", None) is False
    hits, _ = l1.get_many(["a"])
    assert hits["a"] == snap("a", 5)


def test_put_accepts_a_newer_version() -> None:
    clock = FakeClock()
    l1 = layer(clock)
    l1.put("a", snap("a", 1))
    assert l1.put("a", snap("a", 2)) is True
    hits, _ = l1.get_many(["a"])
    assert hits["a"] == snap("a", 2)


def test_an_older_version_is_refused_even_after_the_newer_one_expired() -> None:
    # Given version 5 that has expired
    clock = FakeClock()
    l1 = layer(clock, ttl=10.0)
    l1.put("a", snap("a", 5))
    clock.advance(11.0)
    # When a fill of version 3 arrives
    # Then the floor still refuses it
    assert l1.put("a", snap("a", 3)) is False
    assert l1.get_many(["a"]) == ({}, ["a"])


def test_drop_with_min_version_refuses_older_fills_but_accepts_the_new_version() -> None:
    # Given version 1 cached
    clock = FakeClock()
    l1 = layer(clock)
    l1.put("a", snap("a", 1))
    # When the profile changes to version 3 and L1 is dropped with that floor
    l1.drop("a", min_version=3)
    # Then the entry is a miss
    assert l1.get_many(["a"]) == ({}, ["a"])
    # And fills of older versions (read before the change) are refused, also negative ones
    assert l1.put("a", snap("a", 1)) is False
    assert l1.put("a", snap("a", 2)) is False
    assert l1.put("a", None) is False
    assert l1.get_many(["a"]) == ({}, ["a"])
    # But the new version is accepted and served
    assert l1.put("a", snap("a", 3)) is True
    assert l1.get_many(["a"]) == ({"a": snap("a", 3)}, [])


def test_drop_with_min_version_of_an_unknown_user_still_sets_the_floor() -> None:
    clock = FakeClock()
    l1 = layer(clock)
    l1.drop("a", min_version=4)
    assert l1.put("a", snap("a", 3)) is False
    assert l1.put("a", snap("a", 4)) is True


def test_drop_never_lowers_an_existing_floor() -> None:
    # Given a floor of 5 set by an invalidation
    clock = FakeClock()
    l1 = layer(clock)
    l1.drop("a", min_version=5)
    # When a late invalidation for an older version arrives
    l1.drop("a", min_version=2)
    # Then the floor stays at 5
    assert l1.put("a", snap("a", 4)) is False
    assert l1.put("a", snap("a", 5)) is True


def test_plain_drop_forgets_the_user_entirely() -> None:
    # Given version 5 cached
    clock = FakeClock()
    l1 = layer(clock)
    l1.put("a", snap("a", 5))
    # When dropped without a floor
    l1.drop("a")
    # Then it is a miss, and (no floor left) any version may be filled again
    assert l1.get_many(["a"]) == ({}, ["a"])
    assert len(l1) == 0
    assert l1.put("a", snap("a", 1)) is True


def test_clear_empties_the_layer() -> None:
    clock = FakeClock()
    l1 = layer(clock)
    for user in "abc":
        l1.put(user, snap(user, 1))
    l1.put("ghost", None)
    l1.clear()
    assert len(l1) == 0
    hits, misses = l1.get_many(["a", "b", "c", "ghost"])
    assert hits == {}
    assert misses == ["a", "b", "c", "ghost"]


def test_a_forgotten_profile_is_a_negative_hit_that_refuses_fills_up_to_its_version() -> None:
    # Given v3 cached, then the profile deleted
    clock = FakeClock()
    l1 = layer(clock)
    l1.put("a", snap("a", 3))
    l1.forget("a", 3)
    # Then it answers "no such user" at once, and a fill of v3 (read before the delete) is refused
    assert l1.get_many(["a"]) == ({"a": None}, [])
    assert l1.put("a", snap("a", 3)) is False
    assert l1.known_version("a") == 3
    # but a re-created profile with a newer version is taken
    assert l1.put("a", snap("a", 4)) is True
    assert l1.get_many(["a"]) == ({"a": snap("a", 4)}, [])


def test_a_forgotten_profile_expires_after_the_negative_ttl() -> None:
    clock = FakeClock()
    l1 = layer(clock, negative_ttl=5.0)
    l1.forget("a", 2)
    clock.advance(6.0)
    assert l1.get_many(["a"]) == ({}, ["a"])
