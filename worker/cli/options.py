"""The options every ``fanout-worker`` command takes, as a parent parser, and the argument types
commands share.

A command added in its own module gets them by passing ``parents=[common_options()]`` to
``add_parser``; ``main`` applies them (``--log-level`` overrides ``log.level``).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import get_args

from worker.observe.logs import redact
from worker.runtime_settings import LogSettings

LEVELS: tuple[str, ...] = get_args(LogSettings.model_fields["level"].annotation)


def say(text: str) -> None:
    """Print a line of a command's output with any credential masked: stored reasons, events and
    gap records may quote a connection URI (the logs are masked the same way)."""
    print(redact(text))


def iso_time(text: str) -> datetime:
    """An ISO 8601 time; UTC when it names no zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _level(text: str) -> str:
    level = text.upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(LEVELS)}")
    return level


def common_options() -> argparse.ArgumentParser:
    """A parent parser holding ``--log-level``; unset, it leaves the settings' ``log.level``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--log-level",
        type=_level,
        metavar="LEVEL",
        # SUPPRESS: a subcommand that does not see the option must not reset one given before it.
        default=argparse.SUPPRESS,
        help=f"log level for this run, overriding log.level: {', '.join(LEVELS)} (any case)",
    )
    return parent


def overrides(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """The settings the common options set, as ``load_settings`` overrides."""
    level = getattr(args, "log_level", None)
    return {"log": {"level": level}} if level else {}
