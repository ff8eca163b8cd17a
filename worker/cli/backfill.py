"""``fanout-worker backfill``: fan out posts that were skipped (a recorded gap, a window of time or
of ``_id``s) through the live handler on the backfill lane, or repair the posts' snapshots."""

from __future__ import annotations

import argparse
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bson import json_util
from bson.errors import BSONError

from enrichment.errors import ConfigError
from handlers.ids import encode_post_id
from worker.cli.options import common_options, iso_time, say
from worker.repair.backfill import PostBackfill, dry_run
from worker.repair.context import RepairContext, open_repair
from worker.repair.pace import TokenBucket
from worker.repair.ports import GapRecord, RunState, Window
from worker.repair.progress import Progress
from worker.repair.snapshots import RUN_KEY, SnapshotRepair
from worker.settings import Settings
from worker.streams import POSTS


def post_id(text: str) -> Any:
    """An ``_id`` bound: Extended JSON (``{"$oid": "..."}``, ``42``, ``"p1"``), else the text as is
    (a plain string id). Text that is meant as Extended JSON (it opens a document) and is not valid
    is refused rather than taken for a string."""
    try:
        value = json_util.loads(text)
    except (ValueError, TypeError, BSONError) as exc:
        if text.lstrip().startswith("{"):
            raise argparse.ArgumentTypeError(f"not a valid Extended JSON _id: {text!r} ({exc})") from None
        return text
    if isinstance(value, dict) and any(str(k).startswith("$") for k in value):
        # An operator json_util did not turn into a BSON value ({"$date": "x"}): a typo, not an id.
        raise argparse.ArgumentTypeError(f"not a valid Extended JSON _id: {text!r}")
    return value


def add_parser(sub: Any, config_help: str) -> None:
    p = sub.add_parser(
        "backfill",
        help="fan out skipped posts (a gap, a window) or repair the posts' snapshots",
        description="Read posts from the collection by an indexed range and fan them out through the "
        "live handler, on the backfill lane, at backfill.posts_per_second, with the message ids live "
        "handling gives them. Resumable (its own checkpoint per run) and idempotent.",
        parents=[common_options()],
    )
    p.add_argument("--config", type=Path, metavar="PATH", help=config_help)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--gap", metavar="ID", help="a recorded gap (ids: --all-gaps --dry-run)")
    what.add_argument("--all-gaps", action="store_true", help="every recorded gap not yet backfilled")
    what.add_argument("--to", type=iso_time, metavar="ISO", help="posts created up to this time (created_at)")
    what.add_argument("--id-to", type=post_id, metavar="ID", help="posts with an _id up to this one")
    what.add_argument(
        "--snapshots", action="store_true", help="bring every post to its author's current snapshot"
    )
    p.add_argument("--from", dest="start", type=iso_time, metavar="ISO", help="with --to: from this time")
    p.add_argument("--id-from", type=post_id, metavar="ID", help="with --id-to: from this _id")
    p.add_argument("--rate", type=float, metavar="N", help="posts per second (backfill.posts_per_second)")
    p.add_argument("--dry-run", action="store_true", help="print what it would do; publish nothing")
    p.add_argument("--restart", action="store_true", help="start over, ignoring the run's checkpoint")
    p.add_argument(
        "--metrics-file",
        type=Path,
        metavar="PATH",
        help="write progress as Prometheus gauges to PATH (node_exporter's textfile collector), "
        "every second and at the end",
    )
    p.set_defaults(execute=execute)


async def execute(settings: Settings, args: argparse.Namespace) -> int:
    if args.start is not None and args.to is None:
        raise ConfigError("--from needs --to")
    if args.id_from is not None and args.id_to is None:
        raise ConfigError("--id-from needs --id-to")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be a positive number of posts per second")
    async with AsyncExitStack() as stack:
        # --snapshots rewrites posts in place: it publishes nothing.
        ctx = await open_repair(settings, stack, publish=not (args.dry_run or args.snapshots))
        if args.gap is not None or args.all_gaps:
            return await _gaps(ctx, args)
        if args.snapshots:
            return await _snapshots(ctx, args)
        if args.to is not None:
            window = Window("created_at", args.start, args.to)
            key = f"time:{args.start.isoformat() if args.start else '-'}..{args.to.isoformat()}"
        else:
            window = Window("_id", args.id_from, args.id_to)
            key = f"ids:{json_util.dumps(args.id_from)}..{json_util.dumps(args.id_to)}"
        if args.dry_run:
            await _print_dry_run(ctx, key, window)
            return 0
        _print_state(await _backfill(ctx, args, key, window))
        return 0


def _bucket(settings: Settings, args: argparse.Namespace) -> TokenBucket:
    b = settings.backfill
    return TokenBucket(args.rate or b.posts_per_second, b.batch_size)


async def _backfill(ctx: RepairContext, args: argparse.Namespace, key: str, window: Window) -> RunState:
    s = ctx.settings
    backfill = PostBackfill(
        ctx.reader,
        ctx.runs,
        ctx.posts_handler,
        ctx.dead_letters,
        s.backfill.batch_size,
        _bucket(s, args),
        s.pipeline.max_attempts,
        s.pipeline.retry_max_seconds,
    )
    progress = Progress(
        f"backfill {key}", await ctx.reader.count_posts(window), sys.stderr, metrics_file=args.metrics_file
    )
    try:
        return await backfill.run(key, window, progress, restart=args.restart)
    finally:
        progress.finish()


def _gap_window(record: GapRecord) -> Window:
    gap = record.gap
    if gap.start is None:
        raise ConfigError(
            f"gap {record.id} has no start time (no event was checkpointed before it): backfill it "
            f"with --from ISO --to {gap.end.isoformat()}"
        )
    return Window("created_at", gap.start, gap.end)


async def _gaps(ctx: RepairContext, args: argparse.Namespace) -> int:
    records = await ctx.gaps.gap_records()
    if args.gap is not None:
        chosen = [r for r in records if r.id == args.gap]
        if not chosen:
            raise ConfigError(f"no gap {args.gap!r} (`backfill --all-gaps --dry-run` lists them)")
    else:
        # A dry run lists them all; a run takes those not backfilled yet.
        chosen = [r for r in records if r.backfilled_at is None or args.restart or args.dry_run]
    if not chosen:
        say("no gap to backfill")
        return 0
    snapshots: RunState | None = None
    left = 0  # gaps --all-gaps cannot do alone
    for record in chosen:
        gap, key = record.gap, f"gap:{record.id}"
        if args.dry_run:
            done = f"backfilled at {record.backfilled_at.isoformat()}" if record.backfilled_at else "pending"
            say(f"gap {record.id}: {gap.stream} from {gap.start} to {gap.end} ({gap.reason}); {done}")
            if gap.stream == POSTS.name and gap.start is not None:
                await _print_dry_run(ctx, key, _gap_window(record))
            elif gap.stream == POSTS.name:
                say(f"  no start time: backfill it with --from ISO --to {gap.end.isoformat()}")
            else:
                say("  would repair every post's snapshot (--snapshots)")
            continue
        if record.backfilled_at is not None and not args.restart:
            at = record.backfilled_at.isoformat()
            say(f"gap {record.id}: already backfilled at {at} (--restart to redo)")
            continue
        if gap.stream == POSTS.name:
            if gap.start is None and args.all_gaps:
                say(f"gap {record.id}: no start time: backfill it with --from ISO --to {gap.end.isoformat()}")
                left += 1
                continue
            state = await _backfill(ctx, args, key, _gap_window(record))
        else:
            # Profile changes skipped: the posts' snapshots may be stale; rewrite them (once).
            snapshots = snapshots or await _run_snapshots(ctx, args)
            state = snapshots
        _print_state(state)
        await ctx.gaps.mark_backfilled(record.id, state.counts)
        say(f"gap {record.id}: marked backfilled")
    return 1 if left else 0


async def _run_snapshots(ctx: RepairContext, args: argparse.Namespace) -> RunState:
    s = ctx.settings
    repair = SnapshotRepair(
        ctx.profiles,
        ctx.posts,
        ctx.runs,
        s.backfill.batch_size,
        s.pipeline.rewrite_concurrency,
        _bucket(s, args),
    )
    progress = Progress(
        "snapshots", await ctx.profiles.count_profiles(), sys.stderr, metrics_file=args.metrics_file
    )
    try:
        return await repair.run(progress, restart=args.restart)
    finally:
        progress.finish()


async def _snapshots(ctx: RepairContext, args: argparse.Namespace) -> int:
    if args.dry_run:
        state = await ctx.runs.load_run(RUN_KEY)
        resume = ""
        if state is not None and not state.done and state.position is not None:
            resume = f", resuming after {state.position.id}"
        count = await ctx.profiles.count_profiles()
        say(f"snapshots: would rewrite the stale posts of {count} profile(s){resume}")
        return 0
    _print_state(await _run_snapshots(ctx, args))
    return 0


async def _print_dry_run(ctx: RepairContext, key: str, window: Window) -> None:
    count, first = await dry_run(ctx.reader, window)
    state = await ctx.runs.load_run(key)
    say(f"backfill {key}: {count} post(s) by {window.field} from {window.start} to {window.end}")
    if state is not None:
        where = f"after {encode_post_id(state.position.id)}" if state.position else "at the start"
        say(f"  checkpoint: {'done' if state.done else 'stopped ' + where} ({_counts(state)})")
    for doc in first:
        say(f"  post {encode_post_id(doc.get('_id'))} by {doc.get('author_id')} at {doc.get('created_at')}")
    if count > len(first):
        say(f"  ... and {count - len(first)} more")


def _counts(state: RunState) -> str:
    return ", ".join(f"{k} {v}" for k, v in state.counts.items())


def _print_state(state: RunState) -> None:
    say(f"backfill {state.key}: {'done' if state.done else 'stopped'} ({_counts(state)})")
