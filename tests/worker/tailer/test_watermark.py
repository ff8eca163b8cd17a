"""The contiguous finished watermark: the checkpoint never passes an unfinished event."""

from __future__ import annotations

from datetime import UTC, datetime

from worker.tailer.watermark import Watermark


def tok(n: int) -> dict[str, str]:
    return {"_data": f"82{n:016X}"}


def at(second: int) -> datetime:
    return datetime(2024, 1, 1, 0, 0, second, tzinfo=UTC)


def test_a_fresh_watermark_has_no_token() -> None:
    wm = Watermark()
    assert wm.token is None
    assert wm.event_time is None
    assert wm.version == 0
    assert wm.outstanding == 0


def test_out_of_order_finishes_advance_only_to_the_end_of_the_contiguous_run() -> None:
    # Given four events begun in order
    wm = Watermark()
    seqs = [wm.begin(tok(i), at(i)) for i in range(4)]
    assert seqs == [0, 1, 2, 3]
    # When the third finishes first
    wm.finish(seqs[2])
    # Then nothing moves: events 0 and 1 are not done
    assert wm.token is None
    assert wm.version == 0
    assert wm.outstanding == 4
    # When the first finishes, the watermark reaches it only
    wm.finish(seqs[0])
    assert wm.token == tok(0)
    assert wm.event_time == at(0)
    assert wm.version == 1
    # When the second finishes, the run 0..2 is contiguous: jump straight to 2
    wm.finish(seqs[1])
    assert wm.token == tok(2)
    assert wm.event_time == at(2)
    assert wm.version == 2
    assert wm.outstanding == 1
    # When the last finishes, everything is done
    wm.finish(seqs[3])
    assert wm.token == tok(3)
    assert wm.version == 3
    assert wm.outstanding == 0


def test_version_bumps_only_when_the_token_moves() -> None:
    # Given three events
    wm = Watermark()
    a, b, c = (wm.begin(tok(i), None) for i in range(3))
    # When the later ones finish first, the version does not change
    wm.finish(c)
    wm.finish(b)
    assert wm.version == 0
    # When the head finishes and the token jumps over all three, the version bumps once
    wm.finish(a)
    assert wm.token == tok(2)
    assert wm.version == 1


def test_event_time_keeps_the_last_known_time_when_later_events_have_none() -> None:
    wm = Watermark()
    first = wm.begin(tok(0), at(5))
    second = wm.begin(tok(1), None)
    wm.finish(first)
    wm.finish(second)
    assert wm.token == tok(1)
    assert wm.event_time == at(5)


def test_idle_token_is_ignored_while_events_are_outstanding() -> None:
    # Given one event still in flight
    wm = Watermark()
    seq = wm.begin(tok(1), None)
    # When the stream reports idle with a post-batch token beyond it
    wm.idle(tok(9))
    # Then the token does not move past the unfinished event
    assert wm.token is None
    assert wm.version == 0
    # And once the event finishes, the watermark is that event, not the idle token
    wm.finish(seq)
    assert wm.token == tok(1)
    assert wm.version == 1


def test_idle_token_is_taken_when_nothing_is_outstanding() -> None:
    # Given every begun event finished
    wm = Watermark()
    wm.finish(wm.begin(tok(1), at(1)))
    assert wm.version == 1
    # When the stream reports idle with a newer post-batch token
    wm.idle(tok(7))
    # Then the watermark takes it and bumps its version; the event time stays that of the last event
    assert wm.token == tok(7)
    assert wm.version == 2
    assert wm.event_time == at(1)


def test_idle_without_a_token_or_with_the_same_token_does_not_bump() -> None:
    wm = Watermark()
    wm.idle(None)
    assert wm.token is None
    assert wm.version == 0
    wm.idle(tok(3))
    assert wm.version == 1
    # When the same post-batch token is reported again, nothing moved
    wm.idle(tok(3))
    wm.idle(None)
    assert wm.token == tok(3)
    assert wm.version == 1
