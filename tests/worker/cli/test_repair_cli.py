"""The repair commands' arguments: a mistake is one line and exit 2, before any service is reached."""

from __future__ import annotations

import pytest

from worker.cli.main import main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["backfill", "--gap", "1", "--from", "2026-01-01"], "--from needs --to"),
        (["backfill", "--gap", "1", "--id-from", "p1"], "--id-from needs --id-to"),
        (["backfill", "--to", "2026-01-01", "--rate", "0"], "--rate must be a positive"),
        (["dead-letters", "list", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an unreachable MongoDB: the arguments must be refused before it is tried
    code = main([*argv])
    out, err = capsys.readouterr()
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("fanout-worker: ") and says in line
    assert out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["backfill"],  # nothing to backfill named
        ["backfill", "--gap", "1", "--snapshots"],  # two things at once
        ["backfill", "--to", "yesterday"],  # not a time
        ["backfill", "--id-to", '{"$oid": "zz"}'],  # not an ObjectId
        ["backfill", "--id-to", '{"$date": "x"}'],  # Extended JSON with a typo, not a string id
        ["backfill", "--id-to", '{"$binary": 5}'],
        ["dead-letters", "list", "--pending", "--replayed"],
    ],
)
def test_argument_errors_are_refused_by_the_parser_with_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
