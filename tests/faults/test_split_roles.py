"""A split deployment of real processes: one tailer, fan-out workers that are SIGKILLed mid-range.

``fanout-worker run --role tailer`` and ``--role fanout`` subprocesses against WireMongo (the MongoDB
wire stand-in) and the real Redis and RabbitMQ. The jobs wait in the durable quorum queues between
them, so a fan-out worker killed mid-job loses nothing: the broker redelivers the job to another
worker, which replays the same message ids with the same recipients.
"""

from __future__ import annotations

import pytest

from tests.faults.daemon import DB, Daemons, wait_until, worker_env
from tests.harness import Collector
from tests.support.wire_mongo import WireMongo

# A celebrity whose posts split into several ranges (bulk lane), and small authors (ordinary lane).
FOLLOWERS = {
    "star": [f"s{i:05d}" for i in range(6_000)],
    "a1": [f"a1-{i:02d}" for i in range(7)],
    "a2": [f"a2-{i:02d}" for i in range(30)],
}
POSTS = {"p0": "star", "p1": "a1", "p2": "star", "p3": "a2", "p4": "a1"}


@pytest.mark.timeout(120)
async def test_a_fanout_worker_killed_mid_range_loses_nothing_and_replays_identical_ids(
    wm: WireMongo, daemons: Daemons, collector: Collector, exchange: str, key_prefix: str
) -> None:
    # Given one tailer and one fan-out worker as separate processes, small ranges and chunks, and a
    # slow chunk path (a small publish window) so the kill lands mid-range
    env = worker_env(
        wm,
        exchange,
        key_prefix,
        FANOUT_FANOUT__RANGE_SIZE="1000",
        FANOUT_FANOUT__BULK_PREFETCH="1",
        FANOUT_PIPELINE__CHUNK_SIZE="50",
        FANOUT_RABBITMQ__PUBLISH_WINDOW="1",
    )
    tailer = daemons.spawn({**env, "FANOUT_FANOUT__ROLE": "tailer"}, name="tailer")
    await tailer.log_line("leader now", 15)
    first = daemons.spawn({**env, "FANOUT_FANOUT__ROLE": "fanout"}, name="fan-out 1")
    await first.log_line("running", 15)
    await tailer.log_line("stream posts starting", 15)
    # When posts arrive and the fan-out worker is SIGKILLed while it publishes a celebrity's range
    for post_id, author in POSTS.items():
        wm.db(DB).insert("posts", {"_id": post_id, "author_id": author, "text": f"hello from {author}"})
    await wait_until(lambda: len(collector.of("post.created")) >= 40, 30, "the fan-out under way")
    first.kill()
    before_kill = len(collector.of("post.created"))
    # and another worker takes over
    second = daemons.spawn({**env, "FANOUT_FANOUT__ROLE": "fanout"}, name="fan-out 2")

    def complete() -> bool:
        got = collector.recipients_by_post()
        return all(got.get(p) == set(FOLLOWERS[a]) for p, a in POSTS.items())

    await wait_until(complete, 60, "every post delivered to every follower")
    # Then every recipient got every post (checked above) and the kill cost replays, not losses:
    # a message id seen twice carries the same recipients both times
    by_id: dict[str, list[list[str]]] = {}
    for m in collector.of("post.created"):
        by_id.setdefault(m.message_id, []).append(m.body["recipients"])
    assert all(all(r == seen[0] for r in seen) for seen in by_id.values())
    assert before_kill < len(collector.of("post.created"))
    # and the celebrity's posts were split into ranges on the bulk lane, each range complete
    ranges = {
        (m.body["post"]["id"], m.body["range"]["index"], m.body["range"]["count"])
        for m in collector.of("post.created")
    }
    assert {count for post, _, count in ranges if post == "p0"} == {6}
    assert {index for post, index, _ in ranges if post == "p0"} == set(range(6))
    for process in (tailer, second):
        process.terminate()
        assert await process.exited(20) == 0
