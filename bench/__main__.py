"""fanout-worker benchmarks: the worker side by side with the broker's ceiling and a naive baseline.

    make bench                      # full run, 4-5 minutes; exits 1 when a target or a check fails
    python -m bench --scaleout-only # phase 5 alone: the tailer and fan-out processes (bench/scaleout.py)
    python -m bench --smoke         # seconds-long: proves the harness works (CI); checks, no targets

Real Redis and RabbitMQ on 127.0.0.1; the MongoDB side is the in-memory stand-in (NOT MongoDB), so
what is timed is the worker and the brokers. Results go to bench/results/ (JSON and a PNG chart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from loguru import logger
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import references, report, scaleout, scenarios
from bench.graph import GraphSpec, SocialGraph
from bench.peer import PeerProcess
from bench.rig import Rig
from bench.scenarios import SWEEP_FOLLOWERS, Sizes
from worker.settings import Settings

RESULTS = Path(__file__).parent / "results"

SMOKE = Sizes(
    posts=300,
    warmup_posts=50,
    prior_posts=2_000,
    half_load_seconds=1.0,
    storm_users=20,
    storm_posts_per_user=5,
    sweep_messages=20,
    naive_messages=40,
    ceiling_messages=300,
    celebrity=(2_000, 20_000),
)
SMOKE_GRAPH = GraphSpec(users=500, max_followers=2_000)
# Seconds at these sizes: proves the processes, the job queues and the protocol work; measures nothing.
SMOKE_SCALEOUT = scaleout.ScaleSizes(
    graph=SMOKE_GRAPH, one_posts=200, two_posts=200, half_load_seconds=1.0, star=20_000, big_star=50_000
)


class Phases:
    """One progress bar per phase."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def start(self, name: str, total: int) -> Any:
        task = self._progress.add_task(name, total=total)

        def tick(completed: int) -> None:
            self._progress.update(task, completed=completed)

        return tick

    def counter(self, name: str, total: int) -> Any:
        task = self._progress.add_task(name, total=total)
        return lambda n: self._progress.advance(task, n)


async def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    sizes = SMOKE if args.smoke else Sizes(posts=args.posts, edit_rate=args.edit_rate)
    spec = SMOKE_GRAPH if args.smoke else GraphSpec(users=args.users, seed=args.seed)
    base = Settings()
    base = base.model_copy(
        update={
            "rabbitmq": base.rabbitmq.model_copy(update={"publish_window": args.window}),
            "pipeline": base.pipeline.model_copy(update={"chunk_size": args.chunk_size}),
        }
    )
    if args.bulk_prefetch:
        base = base.model_copy(
            update={"fanout": base.fanout.model_copy(update={"bulk_prefetch": args.bulk_prefetch})}
        )
    window = base.rabbitmq.publish_window
    graph = SocialGraph(spec)
    results: dict[str, Any] = {}
    columns = (
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        phases = Phases(progress)
        if args.scaleout_only:
            results["scaleout"] = await _scaleout(args, base, spec, phases)
            return results
        rig = Rig(base, graph)
        scenarios.add_sweep_users(rig)
        await rig.start()
        try:
            tick = phases.start("1. steady", sizes.posts)
            profiler = _profiler(args.profile)
            results["steady"] = await scenarios.steady(rig, graph, sizes, args.seed, tick)
            if profiler is not None:
                profiler.stop()
                args.profile.write_text(profiler.output_text(unicode=True, show_all=True))
            # The ceiling replays the worker's own body sizes, sampled if there are many.
            sample = list(rig.sizes)
            if len(sample) > sizes.ceiling_messages:
                sample = random.Random(args.seed).sample(sample, sizes.ceiling_messages)
            count = phases.counter("ceiling (bare aio-pika)", len(sample))
            results["ceiling"] = await references.ceiling(sample, window, count)
            if args.steady_only:
                return results
            half_rate = results["steady"]["posts_per_s"] / 2
            tick = phases.start("4. half load", int(half_rate * sizes.half_load_seconds))
            results["half_load"] = await scenarios.half_load(
                rig, graph, half_rate, sizes.half_load_seconds, sizes.edit_rate, args.seed + 7, tick
            )
            count = phases.counter("sweep: followers per post", len(SWEEP_FOLLOWERS))
            ours = await scenarios.sweep(rig, sizes, count)
            naive_rows = []
            count = phases.counter("sweep: naive baseline", len(SWEEP_FOLLOWERS) * sizes.naive_messages)
            for followers in SWEEP_FOLLOWERS:
                user = scenarios.sweep_user(followers)
                row = await references.naive(
                    [(f"n{followers}-{i}", user) for i in range(sizes.naive_messages)],
                    rig.source,
                    rig.follows,
                    sizes.naive_messages,
                    count,
                )
                naive_rows.append({"followers": followers, **row})
            results["sweep"] = {"ours": ours, "naive": naive_rows}
            # The naive baseline on the steady workload's own posts and authors.
            steady_posts = [(f"n{i}", a) for i, a in enumerate(graph.authors(sizes.posts, args.seed))]
            count = phases.counter("naive baseline (steady authors)", sizes.naive_messages)
            results["naive"] = await references.naive(
                steady_posts, rig.source, rig.follows, sizes.naive_messages, count
            )
            # The ceiling again, after the half-load, sweep and baseline phases: the ratio uses the mean.
            count = phases.counter("ceiling again", len(sample))
            results["ceiling_end"] = await references.ceiling(sample, window, count)
            results["dead_lettered"] = rig.dead_lettered
            results["retried"] = rig.retries
        finally:
            await rig.stop()

        tick = phases.start("3. profile storm", sizes.storm_users)
        results["storm"] = await storm(base, sizes, tick)

        count = phases.counter("2. celebrity", len(sizes.celebrity))
        results["celebrity"] = []
        for followers in sizes.celebrity:
            results["celebrity"].append(celebrity(followers, window, base.pipeline.chunk_size))
            count(1)
        results["scaleout"] = await _scaleout(args, base, spec, phases)
    return results


async def _scaleout(args: argparse.Namespace, base: Settings, spec: GraphSpec, phases: Phases) -> Any:
    sizes = SMOKE_SCALEOUT if args.smoke else scaleout.ScaleSizes(graph=spec, big_star=args.big_star)
    tick = phases.counter("5. scale-out (processes)", 5)
    return await scaleout.scaleout(base, spec, sizes, args.seed, tick)


def _profiler(path: Path | None) -> Any:
    """pyinstrument over the steady phase: where the worker's time goes."""
    if path is None:
        return None
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    return profiler


async def storm(base: Settings, sizes: Sizes, tick: Any) -> dict[str, Any]:
    rig = Rig(base, None)
    scenarios.seed_storm_users(rig, sizes)
    await rig.start()
    peer = PeerProcess(rig.settings.redis.key_prefix, sizes.storm_users)
    try:
        await peer.ready()
        result = await scenarios.storm(rig, peer, sizes, tick)
        result["expected_rewrites"] = sizes.storm_users * sizes.storm_posts_per_user
        result["dead_lettered"] = rig.dead_lettered
        result["retried"] = rig.retries
        return result
    finally:
        peer.kill()
        await rig.stop()


def celebrity(followers: int, window: int, chunk_size: int) -> dict[str, Any]:
    """In a fresh process, so earlier phases' memory does not hide the growth."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.celebrity", str(followers), str(window), str(chunk_size)],
        capture_output=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"celebrity {followers:,} failed:\n{out.stderr.decode(errors='replace')}")
    return orjson.loads(out.stdout)  # type: ignore[no-any-return]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no targets (what CI runs)")
    parser.add_argument("--posts", type=int, default=20_000, help="steady-scenario posts (default 20,000)")
    parser.add_argument("--users", type=int, default=10_000, help="users in the graph (default 10,000)")
    parser.add_argument("--edit-rate", type=float, default=0.02, help="profile edits per post (default 0.02)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--window", type=int, default=Settings().rabbitmq.publish_window, help="publish window"
    )
    parser.add_argument("--chunk-size", type=int, default=Settings().pipeline.chunk_size)
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile of the steady phase here")
    parser.add_argument(
        "--steady-only", action="store_true", help="stop after the steady phase and the ceiling"
    )
    parser.add_argument(
        "--scaleout-only", action="store_true", help="only the scale-out rounds (fan-out processes)"
    )
    parser.add_argument(
        "--big-star",
        type=int,
        default=10_000_000,
        help="followers of the scale-out's one big post (default 10,000,000; 0 skips it)",
    )
    parser.add_argument(
        "--bulk-prefetch", type=int, default=0, help="fanout.bulk_prefetch for the run (default: settings')"
    )
    parser.add_argument("--out", type=Path, help="results folder (default bench/results; smoke: a temp dir)")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="fanout-bench-") if args.smoke and not args.out else None
    out: Path = args.out or (Path(scratch.name) if scratch is not None else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=None if sys.stdout.isatty() else 110)
    logger.remove()
    logger.add(out / "bench.log", level="WARNING", mode="w")
    started = time.perf_counter()
    results = asyncio.run(run(args, console))
    if args.steady_only:
        s, c = results["steady"], results["ceiling"]
        console.print(
            f"steady {s['messages_per_s']:,.0f} msg/s, {s['cpu_us_per_message']:.0f} µs CPU/msg; ceiling "
            f"{c['messages_per_s']:,.0f} msg/s, {c['cpu_us_per_message']:.0f} µs CPU/msg; "
            f"ratio {s['messages_per_s'] / c['messages_per_s']:.2f}; p99 {s['latency_p99_ms']:,.0f} ms"
        )
        return 0
    full = "steady" in results  # else --scaleout-only
    results["targets"] = (report.targets(results) if full else []) + report.scaleout_targets(
        results["scaleout"]
    )
    results["checks"] = (report.checks(results) if full else []) + report.scaleout_checks(results["scaleout"])
    results["run"] = {
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started,
        "machine": machine(),
        "smoke": args.smoke,
    }
    if full:
        report.print_report(results, console)
    report.print_scaleout(results["scaleout"], console)
    report.print_verdict(results, console)
    report.write_json(results, out / ("results.json" if full else "scaleout.json"))
    if full:
        report.write_chart(results, out / "deliveries.png")
    if scratch is None:
        console.print(f"results: {out}/ ({'results.json, deliveries.png' if full else 'scaleout.json'})")
    else:
        console.print("smoke run: the harness works end to end (results written, then removed)")
    missed = [t for t in results["targets"] if not t["met"]]
    broken = [c for c in results["checks"] if not c["ok"]]
    if scratch is not None:
        logger.remove()
        scratch.cleanup()
    if broken:
        return 1  # lost, duplicated or dead-lettered work: the numbers mean nothing
    if args.smoke:
        return 0
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
