"""The demo ends with two plain sentences on what it proved, and says so when it fell short."""

from __future__ import annotations

import os

import pytest

from worker.cli.demo import PROVED, Workload, print_summary, proved, run_demo
from worker.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FANOUT_"):
            monkeypatch.delenv(name)


async def test_an_offline_run_ends_with_what_it_proved(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a small workload on the in-memory stand-ins
    summary = await run_demo(Settings(), Workload(users=60, posts=30, edits=5), use_services=False)
    # When the summary is printed
    print_summary(summary)
    out = capsys.readouterr().out
    # Then it ends with two sentences naming what ran and what held
    last = " ".join(out.strip().split("\n\n")[-1].split())
    assert last == summary[PROVED]
    assert last.startswith("All 30 posts written to the in-memory MongoDB stand-in were enriched")
    assert "inline jobs (no RabbitMQ)" in last
    assert last.endswith("so every post holds its author's current snapshot.")
    assert last.count(". ") == 1


def test_a_short_run_says_what_fell_short() -> None:
    text = proved(10, 7, 50, 40, 38, "RabbitMQ job queues", 3, 8, 10)
    assert text.startswith("Only 7 of the 10 posts written were enriched")
    assert "of which 38 were received" in text
    assert "8 of 10 posts hold their author's current snapshot: the others are stale." in text
