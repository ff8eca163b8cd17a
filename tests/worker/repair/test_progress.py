"""What a repair command shows: a bar on a terminal, nothing but log lines otherwise."""

from __future__ import annotations

import io
from pathlib import Path

from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

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


def test_a_metrics_file_holds_the_runs_gauges_for_the_textfile_collector(tmp_path: Path) -> None:
    # Given a run writing its progress to a metrics file
    path = tmp_path / "backfill.prom"
    progress = Progress("backfill gap:g1", 10, io.StringIO(), tty=False, metrics_file=path)
    # When it has handled 4 of 10 posts, Then the file says so, not finished yet
    progress.update(4, {"posts": 4, "jobs": 5})
    samples = _samples(path)
    assert samples[("fanout_repair_done", (("run", "backfill gap:g1"),))] == 4
    assert samples[("fanout_repair_total", (("run", "backfill gap:g1"),))] == 10
    assert samples[("fanout_repair_count", (("counter", "jobs"), ("run", "backfill gap:g1")))] == 5
    assert samples[("fanout_repair_finished", (("run", "backfill gap:g1"),))] == 0
    # and once it ends, whatever the last write's age, the file has the last numbers and finished 1
    progress.update(10, {"posts": 10, "jobs": 12})
    progress.finish()
    samples = _samples(path)
    assert samples[("fanout_repair_done", (("run", "backfill gap:g1"),))] == 10
    assert samples[("fanout_repair_finished", (("run", "backfill gap:g1"),))] == 1


def test_a_metrics_file_that_cannot_be_written_does_not_stop_the_run(tmp_path: Path) -> None:
    progress = Progress("snapshots", 3, io.StringIO(), tty=False, metrics_file=tmp_path / "no" / "x.prom")
    progress.update(1, {"profiles": 1})
    progress.finish()  # a warning is logged; nothing raised


def _samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }
