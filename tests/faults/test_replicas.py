"""Two replicas against one shared store: one leader, fenced checkpoints, takeover within the TTL."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from enrichment.errors import ServiceUnavailable
from tests.harness import World, settings, wait_for
from worker.daemon import Worker
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import MemoryLeaseStore
from worker.ports import Lease
from worker.settings import LeaderSettings
from worker.tailer.leader import Leadership

LEADER = LeaderSettings(ttl_seconds=1.0, renew_interval_seconds=0.2)


class Partitionable:
    """A replica's view of the shared lease store; ``cut`` makes every call fail, like a partition."""

    def __init__(self, store: MemoryLeaseStore) -> None:
        self._store = store
        self.cut = False

    def _check(self) -> None:
        if self.cut:
            raise ServiceUnavailable("partitioned from the lease store")

    async def acquire(self, owner: str, ttl_seconds: float) -> Lease | None:
        self._check()
        return await self._store.acquire(owner, ttl_seconds)

    async def renew(self, lease: Lease, ttl_seconds: float) -> Lease | None:
        self._check()
        return await self._store.renew(lease, ttl_seconds)

    async def release(self, lease: Lease) -> None:
        self._check()
        await self._store.release(lease)

    async def current(self) -> Lease | None:
        return await self._store.current()


class Liar(Partitionable):
    """A replica that wrongly believes its renewals succeed (a paused VM, a clock gone wrong)."""

    async def renew(self, lease: Lease, ttl_seconds: float) -> Lease | None:
        return lease


def _world() -> World:
    world = World()
    for i in range(5):
        world.add_user(f"u{i}")
        world.graph.set_followers(f"u{i}", [f"f{i}{j}" for j in range(30)])
    return world


def _replica(world: World, leases: Partitionable, name: str) -> tuple[Worker, MemoryPublisher]:
    publisher = MemoryPublisher()
    runtime = world.runtime(settings(chunk_size=10), None, publisher)
    return Worker(runtime, Leadership(leases, LEADER, owner=name)), publisher


def _delivered(*publishers: MemoryPublisher) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for publisher in publishers:
        for m in publisher.messages:
            if m.routing_key == "post.created":
                out.setdefault(m.correlation_id, set()).update(orjson.loads(m.body)["recipients"])
    return out


@pytest.mark.timeout(60)
async def test_only_the_leader_tails_and_a_standby_takes_over_within_the_ttl() -> None:
    # Given two replicas over one store; A starts first and leads
    world = _world()
    shared = MemoryLeaseStore()
    view_a, view_b = Partitionable(shared), Partitionable(shared)
    a, pub_a = _replica(world, view_a, "A")
    b, pub_b = _replica(world, view_b, "B")
    task_a = asyncio.create_task(a.run())
    await wait_for(lambda: a.role == "leader" and bool(a.pipelines), what="A to lead")
    task_b = asyncio.create_task(b.run())
    await wait_for(lambda: b.role == "standby", what="B to stand by")

    # When posts arrive, only the leader reads them
    for i in range(20):
        world.post(f"p{i:03d}", f"u{i % 5}")
    await wait_for(lambda: sum(p.stats.handled for p in a.pipelines) >= 20, what="A to handle 20")
    assert b.pipelines == []
    assert pub_b.messages == []
    await wait_for(lambda: "posts" in world.checkpoints.saved, what="a checkpoint")
    checkpoint_a = world.checkpoints.saved["posts"]
    assert checkpoint_a.epoch == 1

    # When A dies abruptly: cut off from the store (cannot release) and its tasks cancelled
    view_a.cut = True
    task_a.cancel()
    await asyncio.gather(task_a, return_exceptions=True)
    died = time.monotonic()
    checkpoint_at_death = world.checkpoints.saved["posts"]
    for i in range(20, 40):
        world.post(f"p{i:03d}", f"u{i % 5}")

    # Then B takes over within the lease TTL (plus one poll), with a higher epoch
    await wait_for(lambda: b.role == "leader" and bool(b.pipelines), timeout=10, what="B to lead")
    assert time.monotonic() - died <= LEADER.ttl_seconds + LEADER.renew_interval_seconds + 0.5
    assert b.epoch == 2
    # and resumes from A's last checkpoint, delivering every recipient
    expected = {
        p: {f"f{d['author_id'][1]}{j}" for j in range(30)} for p, d in world.db.collection("posts").items()
    }
    await wait_for(lambda: _delivered(pub_a, pub_b) == expected, what="all recipients")
    assert b.runtime.feeds["posts"].opened_with[0] == checkpoint_at_death.token  # type: ignore[attr-defined]
    await wait_for(lambda: world.checkpoints.saved["posts"].epoch == 2, what="B's checkpoint")
    b.stop.set()
    await task_b


@pytest.mark.timeout(60)
async def test_a_deposed_leader_cannot_overwrite_the_checkpoint() -> None:
    # Given A leads (epoch 1) but wrongly believes its renewals succeed
    world = _world()
    shared = MemoryLeaseStore()
    liar = Liar(shared)
    a, _ = _replica(world, liar, "A")
    task_a = asyncio.create_task(a.run())
    await wait_for(lambda: a.role == "leader" and bool(a.pipelines), what="A to lead")
    world.post("p0", "u0")
    await wait_for(lambda: "posts" in world.checkpoints.saved, what="A's checkpoint")

    # When its lease expires in the store and B takes over with epoch 2
    shared.lease = Lease("A", 1, shared.lease.expires_at.replace(year=2000))  # type: ignore[union-attr]
    b, _ = _replica(world, Partitionable(shared), "B")
    task_b = asyncio.create_task(b.run())
    await wait_for(lambda: b.role == "leader" and bool(b.pipelines), what="B to lead")
    world.post("p1", "u1")
    await wait_for(lambda: world.checkpoints.saved["posts"].epoch == 2, what="B's checkpoint")

    # Then A's next checkpoint write is fenced off: A stops and goes back to standby
    world.post("p2", "u2")
    await wait_for(lambda: a.role == "standby", what="A to be fenced off")
    assert world.checkpoints.fenced >= 1
    assert world.checkpoints.saved["posts"].epoch == 2
    for w, t in ((a, task_a), (b, task_b)):
        w.stop.set()
        await t


@pytest.mark.timeout(60)
async def test_a_leader_that_cannot_renew_stops_before_its_lease_expires() -> None:
    world = _world()
    shared = MemoryLeaseStore()
    view = Partitionable(shared)
    a, _ = _replica(world, view, "A")
    task_a = asyncio.create_task(a.run())
    await wait_for(lambda: a.role == "leader" and bool(a.pipelines), what="A to lead")
    pipelines = a.pipelines

    # When A is cut off from the store, its renewals fail
    view.cut = True
    expires = shared.lease.expires_at  # type: ignore[union-attr]  # the last renewal it got
    await wait_for(lambda: a.role == "standby", timeout=5, what="A to step down")
    stepped_down = time.time()

    # Then it stopped processing before the last lease it held could expire
    assert stepped_down < expires.timestamp()
    assert all(p.in_flight == 0 for p in pipelines)
    a.stop.set()
    view.cut = False
    await asyncio.gather(task_a, return_exceptions=True)
