"""``fanout-worker dead-letters list|show|replay|purge``: the events the tailer could not handle,
kept in ``mongo.dead_letters`` with the reason, and what an operator does about them."""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bson import json_util

from enrichment.errors import ConfigError
from worker.cli.options import common_options, iso_time, say
from worker.repair.context import open_repair
from worker.repair.ports import DeadLetter, DeadLetterArchive, DeadLetterFilter
from worker.repair.replay import replay
from worker.settings import Settings

EXIT_DECLINED = 1


def add_parser(sub: Any, config_help: str) -> None:
    p = sub.add_parser(
        "dead-letters",
        help="list, show, replay or purge the dead-lettered events",
        description="The events the tailer dead-lettered (malformed, or failing past pipeline.max_attempts), "
        "with the reason. Replay runs them through today's handlers once their cause is fixed.",
        parents=[common_options()],
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("list", "list dead letters, oldest first"),
        ("show", "print dead letters in full, their event included"),
        ("replay", "run dead letters through today's handlers; mark them replayed"),
        ("purge", "delete dead letters (asks first, unless --yes)"),
    ):
        a = actions.add_parser(
            name, help=text, description=text[0].upper() + text[1:] + ".", parents=[common_options()]
        )
        a.add_argument("--config", type=Path, metavar="PATH", help=config_help)
        a.add_argument("ids", nargs="*", metavar="ID", help="dead letters by id (default: all matching)")
        a.add_argument("--stream", help="posts or profiles")
        a.add_argument("--reason", metavar="TEXT", help="whose reason contains TEXT (any case)")
        a.add_argument("--since", type=iso_time, metavar="ISO", help="dead-lettered at or after this time")
        a.add_argument("--until", type=iso_time, metavar="ISO", help="dead-lettered at or before this time")
        state = a.add_mutually_exclusive_group()
        state.add_argument("--replayed", action="store_true", help="only those already replayed")
        state.add_argument("--pending", action="store_true", help="only those not replayed yet")
        limit = 1000 if name == "replay" else 50
        a.add_argument("--limit", type=int, default=limit, help=f"at most this many (default {limit})")
        if name == "replay":
            a.add_argument("--dry-run", action="store_true", help="print, publish nothing")
        if name == "purge":
            a.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is no terminal)")
    p.set_defaults(execute=execute)


def _filter(args: argparse.Namespace) -> DeadLetterFilter:
    replayed = True if args.replayed else False if args.pending else None
    if args.action == "replay" and replayed is None and not args.ids:
        replayed = False  # by filter, replay what was not replayed yet; by id, whatever it is
    return DeadLetterFilter(args.stream, args.reason, args.since, args.until, replayed, tuple(args.ids))


async def execute(settings: Settings, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    where = _filter(args)
    publish = args.action == "replay" and not args.dry_run
    async with AsyncExitStack() as stack:
        ctx = await open_repair(settings, stack, publish=publish)
        archive = ctx.archive
        if args.action == "purge":
            return await _purge(archive, where, args.yes)
        found = await archive.find(where, args.limit)
        if args.action == "show":
            if not found:
                raise ConfigError("no dead letter matches")
            for dead in found:
                say(_detail(dead))
            return 0
        if args.action == "list" or args.dry_run:
            for dead in found:
                say(_line(dead))
            total = await archive.count(where)
            verb = "would replay" if args.action == "replay" else "listed"
            say(f"{verb} {len(found)} of {total} dead letter(s)")
            return 0
        p = settings.pipeline
        outcome = await replay(archive, ctx.handlers, where, args.limit, p.max_attempts, p.retry_max_seconds)
        for dead_id in outcome.replayed:
            say(f"replayed {dead_id}")
        for dead_id, why in outcome.failed.items():
            say(f"not replayed {dead_id}: {why}")
        say(f"replayed {len(outcome.replayed)}, failed {len(outcome.failed)}")
        return 0 if not outcome.failed else 1


async def _purge(archive: DeadLetterArchive, where: DeadLetterFilter, yes: bool) -> int:
    n = await archive.count(where)
    if n == 0:
        say("no dead letter matches: nothing purged")
        return 0
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"refusing to purge {n} dead letter(s) without --yes: stdin is not a terminal")
        answer = await asyncio.to_thread(input, f"purge {n} dead letter(s) for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            say("nothing purged")
            return EXIT_DECLINED
    say(f"purged {await archive.purge(where)} dead letter(s)")
    return 0


def _line(dead: DeadLetter) -> str:
    at = dead.at.isoformat(timespec="seconds") if dead.at else "-"
    state = f"replayed {dead.replayed_at.isoformat(timespec='seconds')}" if dead.replayed_at else "pending"
    cut = " (event cut: not replayable)" if dead.truncated or dead.event is None else ""
    return f"{dead.id}  {at}  {dead.stream}  {state}  {dead.error[:120]}{cut}"


def _detail(dead: DeadLetter) -> str:
    event = json_util.dumps(dead.event, indent=2) if dead.event is not None else "(not readable)"
    return "\n".join(
        (
            f"id: {dead.id}",
            f"stream: {dead.stream}",
            f"at: {dead.at.isoformat() if dead.at else '-'}",
            f"reason: {dead.error}",
            f"replayed: {dead.replayed_at.isoformat() if dead.replayed_at else 'no'} ({dead.replays}x)",
            f"event: {event}",
            "",
        )
    )
