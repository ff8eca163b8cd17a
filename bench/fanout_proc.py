"""A fan-out process for the scale-out benchmarks (bench/scaleout.py), driven over stdin/stdout.

    python -m bench.fanout_proc '{"mode": "fanout", ...}'    # see FanoutProc / CeilingProc

``fanout``: the real fan-out role — ``FanoutRunner`` consuming this run's job queues, followers
from the in-memory graph held in this process (as MongoDB would serve them), chunks published by
``RabbitPublisher`` with confirms. ``ceiling``: one bare aio-pika publisher (bench/references.py)
replaying the body sizes a fan-out process published.

Protocol: the process prints ``ready`` once set up; the driver writes ``go`` to start a round and
``end`` to close it, and the process prints ``result {json}`` for the round (``fanout``: every
20 ms ``acked N``, its jobs acked so far). ``quit`` stops it. Times are wall clock
(``time.time()``), comparable across the processes of one machine.
"""

from __future__ import annotations

import asyncio
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import orjson
from loguru import logger

from bench.graph import GraphSpec, SocialGraph, follower_id
from bench.probes import PeakRss
from bench.references import ceiling
from bench.rig import bench_settings
from handlers.jobs import FanoutJob
from handlers.ports import OutgoingMessage
from handlers.posts import PostStats
from handlers.range_fanout import RangeResult
from worker.daemon import tune_gc
from worker.memory.db import MemoryDatabase
from worker.memory.stores import MemoryFollowerGraph
from worker.settings import Settings
from worker.wiring import fanout_runner, rabbit_publisher

_PROGRESS_SECONDS = 0.02  # only ends the round: the timings are taken in-process


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


def settings_from(cfg: dict[str, Any]) -> Settings:
    base = Settings()
    base = base.model_copy(
        update={
            "rabbitmq": base.rabbitmq.model_copy(update={"publish_window": cfg["window"]}),
            "pipeline": base.pipeline.model_copy(update={"chunk_size": cfg["chunk_size"]}),
        }
    )
    ordinary, bulk = cfg["prefetch"]
    fanout = base.fanout.model_copy(update={"ordinary_prefetch": ordinary, "bulk_prefetch": bulk})
    return bench_settings(base.model_copy(update={"fanout": fanout}), cfg["run_id"])


def load_graph(cfg: dict[str, Any]) -> MemoryFollowerGraph:
    """The same graph the tailer planned over: the seeded Zipf graph, plus the celebrities."""
    follows = MemoryFollowerGraph()
    SocialGraph(GraphSpec(**cfg["graph"])).load(MemoryDatabase(), follows)
    for uid, count in cfg["stars"].items():
        follows.set_followers(uid, [follower_id(n) for n in range(count)])
    return follows


class Round:
    """What one round measures in this process."""

    def __init__(self) -> None:
        self.sizes = array("I")
        self.done: list[tuple[str, str, float]] = []  # (post id, lane, time every chunk was confirmed)
        self.first_send = 0.0
        self.cpu = time.process_time()
        self.rss = PeakRss().__enter__()


async def fanout(cfg: dict[str, Any]) -> None:
    settings = settings_from(cfg)
    graph = load_graph(cfg)
    publisher = rabbit_publisher(settings)
    await publisher.connect()
    counts = PostStats()  # the process's chunk and recipient counters, as the daemon keeps them
    runner = fanout_runner(settings, graph, publisher, counts)
    current = Round()
    send = publisher.send

    async def recorded(message: OutgoingMessage) -> asyncio.Future[None]:
        if not current.first_send:
            current.first_send = time.time()
        current.sizes.append(len(message.body))
        return await send(message)

    publisher.send = recorded  # type: ignore[method-assign]
    for consumer in runner.consumers.values():
        fan_out = consumer._fan_out

        async def timed(job: FanoutJob, fan_out: Any = fan_out) -> RangeResult:
            result: RangeResult = await fan_out(job)
            current.done.append((job.post_id, job.lane, time.time()))
            return result

        consumer._fan_out = timed  # type: ignore[method-assign]
    tune_gc()  # as the daemon does; it also freezes the graph loaded above
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    _out("ready")
    while (command := await _line()) == "go":
        current = Round()
        confirmed, recipients = publisher.stats.confirmed, counts.recipients
        if task is None:
            task = asyncio.create_task(runner.run(stop, 5.0))
        reader = asyncio.create_task(_line())
        while not reader.done():
            _out(f"acked {sum(c.stats.jobs_acked for c in runner.consumers.values())}")
            await asyncio.wait([reader], timeout=_PROGRESS_SECONDS)
        current.rss.__exit__()
        if reader.result() != "end":
            break
        last = max((t for _, _, t in current.done), default=current.first_send)
        report = {
            "messages": publisher.stats.confirmed - confirmed,
            "jobs": len(current.done),
            "recipients": counts.recipients - recipients,
            "first_send": current.first_send,
            "last_done": last,
            "cpu_seconds": time.process_time() - current.cpu,
            "rss_before_mb": current.rss.start / 2**20,
            "rss_growth_mb": current.rss.growth / 2**20,
            "sizes": current.sizes.tolist(),
            "done": current.done,
        }
        _out("result " + orjson.dumps(report).decode())
    del command
    stop.set()
    if task is not None:
        await task
    await publisher.close(5.0)


async def bare(cfg: dict[str, Any]) -> None:
    _out("ready")
    if await _line() != "go":
        return
    started = time.time()
    sizes = array("I")
    sizes.frombytes(Path(cfg["sizes_file"]).read_bytes())  # noqa: ASYNC240 (before the clock starts)
    result = await ceiling(sizes, cfg["window"], lambda n: None)
    _out("result " + orjson.dumps({**result, "started": started}).decode())
    await _line()


def main() -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    cfg = orjson.loads(sys.argv[1])
    asyncio.run(fanout(cfg) if cfg["mode"] == "fanout" else bare(cfg))


if __name__ == "__main__":
    main()
