"""The ``fanout-worker`` command.

Exit codes: 0 ok · 1 unexpected error · 2 bad configuration · 3 a service unreachable at start ·
4 a change stream cannot resume (history lost, invalidate) · 130 interrupted twice.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from enrichment.errors import ConfigError, ServiceUnavailable, StreamFatal
from worker import __version__
from worker.app import build_runtime
from worker.health import HealthServer, status_line, worker_progress
from worker.logs import configure, redact
from worker.notify import Notifier, watchdog_loop
from worker.service import Worker
from worker.settings import Settings, load_settings

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_STREAM_FATAL = 4
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout-worker",
        description="Tail MongoDB change streams, enrich posts with author snapshots, fan out over "
        "RabbitMQ. Settings come from a TOML file, overridden by FANOUT_* environment variables "
        "(FANOUT_RABBITMQ__URL sets rabbitmq.url).",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 bad configuration, 3 service unreachable "
        "at start, 4 change stream cannot resume, 130 interrupted twice.",
    )
    parser.add_argument("--version", action="version", version=f"fanout-worker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon", description="Run the daemon until SIGTERM/SIGINT.")
    run.add_argument("--config", type=Path, required=True, metavar="PATH", help="TOML settings file")

    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline on the in-memory MongoDB stand-in",
        description="Generate a social graph and a workload, run the real pipeline over the "
        "in-memory MongoDB stand-in and print a summary. Uses Redis and RabbitMQ when reachable.",
    )
    demo.add_argument("--config", type=Path, metavar="PATH", help="TOML settings file (optional)")
    demo.add_argument("--users", type=int, default=3_000, help="users to generate (default 3000)")
    demo.add_argument("--posts", type=int, default=1_500, help="posts to write (default 1500)")
    demo.add_argument("--edits", type=int, default=200, help="profile edits to interleave (default 200)")
    demo.add_argument("--offline", action="store_true", help="use in-memory stand-ins for Redis and RabbitMQ")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"fanout-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.log.level, settings.log.format)
    try:
        if args.command == "run":
            return asyncio.run(_run(settings))
        return asyncio.run(_demo(settings, args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _run(settings: Settings) -> int:
    try:
        runtime = await build_runtime(settings)
    except ServiceUnavailable as exc:
        logger.error("cannot start: {}", exc)
        return EXIT_UNAVAILABLE
    worker = Worker(runtime)
    worker.install_signal_handlers()
    notifier = Notifier()
    health: HealthServer | None = None
    if settings.health.enabled:
        h = settings.health
        health = HealthServer(worker, h.host, h.port, h.watchdog_seconds)
        try:
            await health.start()
        except OSError as exc:
            logger.error("cannot listen for health and metrics on {}:{}: {}", h.host, h.port, exc.strerror)
            await worker.close()
            return EXIT_UNAVAILABLE
    helpers = [
        asyncio.create_task(
            watchdog_loop(
                notifier,
                lambda: worker_progress(worker),
                notifier.watchdog_interval() or 10.0,
                lambda: status_line(worker),
            )
        ),
        asyncio.create_task(_announce_stop(worker, notifier)),
    ]
    notifier.ready()
    logger.info("fanout-worker {} running", __version__)
    try:
        return await _supervise(worker)
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if health is not None:
            await health.close()
        notifier.close()


async def _announce_stop(worker: Worker, notifier: Notifier) -> None:
    await worker.stop.wait()
    notifier.stopping()


async def _supervise(worker: Worker) -> int:
    try:
        await worker.run()
    except StreamFatal as exc:
        saved = exc.checkpoint_saved_at.isoformat() if exc.checkpoint_saved_at else "never"
        last = exc.checkpoint_event_time.isoformat() if exc.checkpoint_event_time else "unknown"
        logger.error(
            "stream {} cannot resume: {}. Its checkpoint was saved at {} (last event handled at {}). "
            "Events since then are not processed. To go on: enlarge the oplog window and run "
            "`fanout-worker checkpoint reset --stream {} --to now` (then backfill the gap), or set "
            'pipeline.on_history_lost = "resume-from-now" to record gaps and continue by itself.',
            exc.stream,
            exc.reason,
            saved,
            last,
            exc.stream,
        )
        return EXIT_STREAM_FATAL
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
    except Exception as exc:
        logger.opt(exception=exc).error("fanout-worker failed: {}", redact(str(exc)))
        return EXIT_ERROR
    return EXIT_OK


async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from worker.demo import Workload, print_summary, run_demo

    workload = Workload(users=args.users, posts=args.posts, edits=args.edits)
    summary = await run_demo(settings, workload, use_services=not args.offline)
    print_summary(summary)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
