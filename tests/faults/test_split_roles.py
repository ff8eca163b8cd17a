"""A split deployment of real processes: one tailer, fan-out workers that are SIGKILLed mid-range.

``fanout-worker run --role tailer`` and ``--role fanout`` subprocesses against WireMongo (the MongoDB
wire stand-in) and the real Redis and RabbitMQ. The jobs wait in the durable quorum queues between
them, so a fan-out worker killed mid-job loses nothing: the broker redelivers the job to another
worker, which replays the same message ids with the same recipients.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from handlers.contract import encode_head
from handlers.jobs import job_message
from handlers.ranges import RangePlanner
from tests.faults.daemon import DB, Daemons, wait_until, worker_env
from tests.harness import Collector
from tests.support.fanout_process import follower_id
from tests.support.wire_mongo import WireMongo
from worker.memory.stores import MemoryFollowerGraph
from worker.settings import Settings
from worker.wiring import job_publisher

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


ROOT = Path(__file__).resolve().parents[2]
MEGA = 1_000_000  # followers of one author: too many for WireMongo, so the graph is in memory
MEGA_RANGE = 100_000


@pytest.mark.timeout(240)
async def test_a_1m_follower_post_is_fanned_out_by_two_worker_processes_each_taking_ranges(
    wm: WireMongo, daemons: Daemons, collector: Collector, exchange: str, key_prefix: str
) -> None:
    # Given two fan-out worker processes (the real runner, consumers and publisher; followers from
    # an in-memory graph each generates alike, tests/support/fanout_process.py), one range at a time
    env = worker_env(
        wm,
        exchange,
        key_prefix,
        FANOUT_FANOUT__BULK_PREFETCH="1",
        FANOUT_PIPELINE__CHUNK_SIZE="1000",
        PYTHONPATH=str(ROOT),
    )
    argv = [sys.executable, "-m", "tests.support.fanout_process", "mega", str(MEGA)]
    workers = [daemons.spawn(env, f"fan-out {n}", argv=argv) for n in (1, 2)]
    for w in workers:
        await w.log_line("running", 60)

    # When the tailer's planner splits a 1M-follower post into ranges and publishes them as jobs
    graph = MemoryFollowerGraph()
    graph.set_followers("mega", [follower_id(n) for n in range(MEGA)])
    planned = await RangePlanner(graph, MEGA_RANGE).plan(
        "big", "mega", encode_head("big", "mega", None, "to a million", None)
    )
    assert len(planned) == MEGA // MEGA_RANGE
    settings = Settings.model_validate({"rabbitmq": {"exchange": exchange}, "fanout": _job_names(env)})
    jobs = job_publisher(settings)
    await jobs.connect()
    try:
        await asyncio.gather(*[await jobs.send(job_message(j)) for j in planned])
    finally:
        await jobs.close()

    def delivered() -> int:
        return sum(len(m.body["recipients"]) for m in collector.of("post.created"))

    await wait_until(lambda: delivered() >= MEGA, 150, "a million recipients delivered")
    await asyncio.sleep(0.5)  # a duplicate, if any, arrives too
    acked = []
    for w in workers:
        assert await w.stopped(30) == 0
        line = await w.log_line("acked", 5)
        acked.append(int(re.findall(r"acked (\d+) jobs", line)[0]))

    # Then each process took ranges, every range was acked once, and the union of the recipients is
    # exactly the followers, each once: a message id seen twice carried the same recipients
    assert all(n > 0 for n in acked), acked
    assert sum(acked) == len(planned)
    by_id: dict[str, list[str]] = {}
    for m in collector.of("post.created"):
        assert by_id.setdefault(m.message_id, m.body["recipients"]) == m.body["recipients"]
    recipients = [r for rs in by_id.values() for r in rs]
    assert len(recipients) == MEGA
    assert set(recipients) == {follower_id(n) for n in range(MEGA)}
    assert {m.body["range"]["count"] for m in collector.of("post.created")} == {len(planned)}


def _job_names(env: dict[str, str]) -> dict[str, str]:
    prefix = "FANOUT_FANOUT__"
    return {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
