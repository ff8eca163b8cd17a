"""What a repair command shows: a bar on a terminal, nothing but log lines otherwise."""

from __future__ import annotations

import io

from loguru import logger

from worker.repair.progress import Progress


def test_a_terminal_gets_a_bar_redrawn_in_place_then_a_newline() -> None:
    out = io.StringIO()
    progress = Progress("backfill k", 10, out, tty=True)
    progress.update(5, {"posts": 5})
    progress.update(10, {"posts": 10})
    progress.finish()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "[" + "#" * 15 + " " * 15 + "] 5/10" in text
    assert "] 10/10" in text and "posts 10" in text


def test_a_journal_gets_no_bar_only_log_lines() -> None:
    out = io.StringIO()
    lines: list[str] = []
    sink = logger.add(lines.append, level="INFO", format="{message}")
    try:
        progress = Progress("backfill k", 10, out, tty=False, log_every_seconds=0)
        progress.update(3, {"posts": 3})
        progress.finish()
        Progress("backfill k", 10, out, tty=False).update(4, {"posts": 4})  # within 10 s of its start
    finally:
        logger.remove(sink)
    assert out.getvalue() == ""
    assert len(lines) == 1 and "backfill k: 3/10" in lines[0]
