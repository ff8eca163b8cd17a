"""The ``fanout-worker`` command.

Exit codes: 0 ok · 1 unexpected error · 2 bad configuration · 3 a service unreachable at start ·
4 a change stream cannot resume (history lost, invalidate) · 5 shutdown did not finish in time
(the last-resort guard, worker/shutdown.py) · 130 interrupted twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from enrichment.errors import (
    ConfigError,
    EventTooLarge,
    FanoutError,
    ServiceUnavailable,
    StreamFatal,
)
from worker import __version__, uris
from worker.cli import backfill, deadletters, ops, options
from worker.cli.configdoc import reference
from worker.cli.options import common_options, iso_time
from worker.daemon import Worker, tune_gc
from worker.observe.health import HealthServer, status_line, worker_alive
from worker.observe.logs import configure, redact
from worker.observe.notify import Notifier, watchdog_loop
from worker.observe.summary import summary_loop
from worker.settings import Settings, load_settings
from worker.shutdown import GUARD_GRACE_SECONDS, ExitGuard, bounded
from worker.wiring import build_runtime

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_STREAM_FATAL = 4
EXIT_INTERRUPTED = 130
# Without --config, `run` needs the environment to name MongoDB at least (refuse_unconfigured_run).
MONGO_VARIABLES = ("FANOUT_MONGO__URI", "FANOUT_MONGO")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout-worker",
        description="Tail MongoDB change streams, enrich posts with author snapshots, fan out over "
        "RabbitMQ. Settings come from a TOML file, overridden by FANOUT_* environment variables "
        "(FANOUT_RABBITMQ__URL sets rabbitmq.url).",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 bad configuration, 3 service unreachable "
        "at start, 4 change stream cannot resume, 5 shutdown stuck, 130 interrupted twice.",
    )
    parser.add_argument("--version", action="version", version=f"fanout-worker {__version__}")
    common = [common_options()]
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        parents=common,
        help="run the daemon",
        description="Run the daemon until SIGTERM/SIGINT. Without --config, the FANOUT_* variables "
        "must configure at least MongoDB (FANOUT_MONGO__URI): defaults alone are refused.",
    )
    run.add_argument("--config", type=Path, metavar="PATH", help="TOML settings file (see config.toml)")
    run.add_argument(
        "--role",
        choices=["all", "tailer", "fanout"],
        help="what this process runs (overrides fanout.role): the tailer (lease, streams, jobs), "
        "fan-out workers (jobs → chunks; any number), or all of it (the default)",
    )

    demo = sub.add_parser(
        "demo",
        parents=common,
        help="run the whole pipeline on the in-memory MongoDB stand-in",
        description="Generate a social graph and a workload, run the real pipeline over the "
        "in-memory MongoDB stand-in and print a summary. Uses Redis and RabbitMQ when reachable.",
    )
    demo.add_argument("--config", type=Path, metavar="PATH", help="TOML settings file (optional)")
    demo.add_argument("--users", type=int, default=3_000, help="users to generate (default 3000)")
    demo.add_argument("--posts", type=int, default=1_500, help="posts to write (default 1500)")
    demo.add_argument("--edits", type=int, default=200, help="profile edits to interleave (default 200)")
    demo.add_argument("--offline", action="store_true", help="use in-memory stand-ins for Redis and RabbitMQ")

    config_help = "TOML settings file (optional: defaults and FANOUT_* variables otherwise)"
    check = sub.add_parser(
        "check",
        parents=common,
        help="validate the config and reach every service",
        description="Validate the settings, reach MongoDB (must be a replica set), Redis and RabbitMQ, "
        "and print what is OK and what is not (host:port and the cause). Exit 0 when all are OK, 2 on "
        "bad config (an exchange or queue existing with other arguments included), 3 otherwise.",
    )
    check.add_argument("--config", type=Path, metavar="PATH", help=config_help)

    cp = sub.add_parser(
        "checkpoint",
        parents=common,
        help="show or reset the saved stream positions",
        description="Inspect or reset the per-stream checkpoints in MongoDB.",
    )
    cp_sub = cp.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = cp_sub.add_parser(
        "show",
        parents=common,
        help="print each stream's checkpoint, the lease and recorded gaps",
        description="Print each stream's checkpoint (saved at, age, last event, epoch), the leader "
        "lease and any gaps recorded after history loss.",
    )
    show.add_argument("--config", type=Path, metavar="PATH", help=config_help)
    reset = cp_sub.add_parser(
        "reset",
        parents=common,
        help="point a stream at now or at a time (after history loss)",
        description="Point a stream's checkpoint at a moment: events before it are skipped for good, "
        "so record the window for a backfill. Stop every worker first: a running leader would "
        "overwrite the reset (refused while a lease is live, unless --force).",
    )
    reset.add_argument("--config", type=Path, metavar="PATH", help=config_help)
    reset.add_argument("--stream", default="all", help="posts, profiles or all (default all)")
    target = reset.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", choices=["now"], help="start from now")
    target.add_argument("--to-time", type=iso_time, metavar="ISO", help="start at this time (UTC if no zone)")
    reset.add_argument("--force", action="store_true", help="reset even while a worker holds the lease")

    config = sub.add_parser(
        "config",
        parents=common,
        help="print the effective config (secrets masked), or the reference of every setting",
        description="Print the settings after the file and FANOUT_* variables are applied, as TOML, "
        "with passwords in URLs masked. `config reference` prints docs/config.md instead.",
    )
    config.add_argument("--config", type=Path, metavar="PATH", help=config_help)
    config_sub = config.add_subparsers(dest="action", metavar="ACTION")
    config_sub.add_parser(
        "reference",
        parents=common,
        help="print the reference of every setting (Markdown: docs/config.md)",
        description="Print every setting with its environment variable, type, default, bounds and "
        "description, as Markdown, from the settings model (no file or variable is read).",
    )
    backfill.add_parser(sub, config_help)
    deadletters.add_parser(sub, config_help)
    return parser


def refuse_unconfigured_run(environ: Mapping[str, str], cwd: Path) -> None:
    """``run`` with no ``--config``: refuse unless the environment says where MongoDB is.

    The defaults point at localhost: a production worker started without its configuration must say
    so and stop (exit 2), not tail whatever answers there. Configuring by FANOUT_* variables alone
    (a container) is fine once they name MongoDB.
    """
    if any(name.upper() in MONGO_VARIABLES for name in environ):
        return
    here = cwd / "config.toml"
    hint = f" (there is one here: --config {here.name})" if here.is_file() else ""
    raise ConfigError(
        f"run: no configuration: pass --config PATH, a TOML file like config.toml{hint}, or set "
        f"{MONGO_VARIABLES[0]} and the other FANOUT_* variables (docs/config.md)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config" and args.action == "reference":
        print(reference(), end="")  # the model only: no file or variable can break the reference
        return EXIT_OK
    try:
        if args.command == "run" and args.config is None:
            refuse_unconfigured_run(os.environ, Path.cwd())
        role = getattr(args, "role", None)  # only `run` has --role
        overrides = {**options.overrides(args), **({"fanout": {"role": role}} if role else {})}
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"fanout-worker: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.log.level, settings.log.format)
    if args.command == "run" and args.config is None:
        logger.info("no --config: settings from the FANOUT_* variables and the defaults (docs/config.md)")
    try:
        if args.command == "run":
            return asyncio.run(_run(settings))
        if args.command == "demo":
            return asyncio.run(_demo(settings, args))
        if args.command == "config":
            print(ops.effective_config(settings))
            return EXIT_OK
        if args.command == "check":
            return asyncio.run(_check(settings))
        if hasattr(args, "execute"):  # backfill, dead-letters (worker/cli/backfill.py, deadletters.py)
            return int(asyncio.run(args.execute(settings, args)))
        return asyncio.run(_checkpoint(settings, args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    # Whatever a command did not handle itself: a user's mistake is one line, never a traceback;
    # anything else is a bug, logged with its (redacted) traceback.
    except ConfigError as exc:
        print(f"fanout-worker: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except ServiceUnavailable as exc:
        print(f"fanout-worker: {redact(str(exc))}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as exc:
        logger.opt(exception=exc).error("fanout-worker failed: {}", redact(str(exc)))
        return EXIT_ERROR


async def _check(settings: Settings) -> int:
    results = await ops.check(settings)
    rows = [("service", "status", "detail")]
    rows += [(r.name, "OK" if r.ok else "FAIL", r.detail) for r in results]
    print(ops.format_table(rows))
    if any(r.config_error for r in results):
        return EXIT_CONFIG
    return EXIT_OK if all(r.ok for r in results) else EXIT_UNAVAILABLE


async def _checkpoint(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.action == "show":
            print(await ops.show_checkpoints(settings))
        else:
            to = datetime.now(UTC) if args.to == "now" else args.to_time
            print(await ops.reset_checkpoint(settings, args.stream, to, args.force))
    except ConfigError as exc:
        print(f"fanout-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ServiceUnavailable as exc:
        where = uris.validate_mongo(settings.mongo.uri.get_secret_value()).endpoints()
        print(f"fanout-worker: {where}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except FanoutError as exc:
        print(f"fanout-worker: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


async def _run(settings: Settings) -> int:
    try:
        runtime = await build_runtime(settings)
    except ServiceUnavailable as exc:
        logger.error("cannot start: {}", exc)
        return EXIT_UNAVAILABLE
    except ConfigError as exc:  # e.g. a queue that exists with other arguments
        logger.error("cannot start: {}", exc)
        return EXIT_CONFIG
    worker = Worker(runtime)
    worker.install_signal_handlers()
    # Armed when a stop is asked for; the normal path finishes long before it fires.
    guard = ExitGuard(settings.pipeline.shutdown_deadline_seconds + GUARD_GRACE_SECONDS, lambda: worker.stage)
    tune_gc()
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
                lambda: worker_alive(worker, settings.health.watchdog_seconds),
                notifier.watchdog_interval() or 10.0,
                lambda: status_line(worker),
            )
        ),
        asyncio.create_task(_announce_stop(worker, notifier, guard)),
    ]
    if settings.log.summary_interval_seconds > 0:
        helpers.append(asyncio.create_task(summary_loop(worker, settings.log.summary_interval_seconds)))
    notifier.ready()
    logger.info("fanout-worker {} running", __version__)
    try:
        return await _supervise(worker)
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if health is not None:
            await bounded("closing the health server", health.close(), 1.0)
        notifier.close()
        # Left armed: asyncio.run still waits for every task it cancels, and one that ignores its
        # cancellation would hang the exit. The guard is a daemon thread, so a clean exit is not held.
        worker.stage = "ending the event loop"


async def _announce_stop(worker: Worker, notifier: Notifier, guard: ExitGuard) -> None:
    await worker.stop.wait()
    guard.arm()
    notifier.stopping()


async def _supervise(worker: Worker) -> int:
    try:
        await worker.run()
    except EventTooLarge as exc:
        logger.error(
            "stream {} stopped: {}. It stays at its checkpoint, saved at {} (last event handled at {}): "
            "reopening would meet the same event again. To go on: upgrade MongoDB to 6.0.9+ or 7.0+ "
            '(mongo.large_events = "split" then reassembles it), or set mongo.large_events = "skip" '
            "(dead-lettered without its document), or skip past it with `fanout-worker checkpoint "
            "reset --stream {} --to-time <after the event>`.",
            exc.stream,
            exc.reason,
            exc.checkpoint_saved_at.isoformat() if exc.checkpoint_saved_at else "never",
            exc.checkpoint_event_time.isoformat() if exc.checkpoint_event_time else "unknown",
            exc.stream,
        )
        return EXIT_STREAM_FATAL
    except StreamFatal as exc:
        saved = exc.checkpoint_saved_at.isoformat() if exc.checkpoint_saved_at else "never"
        last = exc.checkpoint_event_time.isoformat() if exc.checkpoint_event_time else "unknown"
        prevent = (
            "enlarge the oplog window so it does not happen again"
            if exc.code == 286
            else "check the collection (dropped, renamed or recreated?)"
        )
        logger.error(
            "stream {} cannot resume: {}. Its checkpoint was saved at {} (last event handled at {}). "
            "Events since then are not processed. To go on: {}, then run `fanout-worker checkpoint "
            "reset --stream {} --to now` (and backfill the gap), or set pipeline.on_history_lost = "
            '"resume-from-now" to record gaps and continue by itself.',
            exc.stream,
            exc.reason,
            saved,
            last,
            prevent,
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
    from worker.cli.demo import Workload, print_summary, run_demo

    workload = Workload(users=args.users, posts=args.posts, edits=args.edits)
    tune_gc()
    summary = await run_demo(settings, workload, use_services=not args.offline)
    print_summary(summary)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
