"""The contiguous finished watermark of one stream.

Events finish out of order; the checkpoint may only move to the end of the contiguous run of
finished events, so a crash replays every event that was not fully handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from handlers.events import Token


@dataclass(slots=True)
class _Slot:
    token: Token
    event_time: datetime | None
    done: bool = False


class Watermark:
    def __init__(self) -> None:
        self._slots: dict[int, _Slot] = {}
        self._head = 0  # lowest sequence number not yet finished
        self._next = 0
        self.token: Token | None = None  # safe to resume after
        self.event_time: datetime | None = None
        self.version = 0  # bumps whenever ``token`` moves, so savers know when to write

    @property
    def outstanding(self) -> int:
        return len(self._slots)

    @property
    def oldest_pending_time(self) -> datetime | None:
        """Cluster time of the oldest unfinished event: what lag is measured from."""
        slot = self._slots.get(self._head)
        return slot.event_time if slot is not None else None

    def begin(self, token: Token, event_time: datetime | None) -> int:
        seq = self._next
        self._next += 1
        self._slots[seq] = _Slot(token, event_time)
        return seq

    def finish(self, seq: int) -> None:
        self._slots[seq].done = True
        moved = False
        while (slot := self._slots.get(self._head)) is not None and slot.done:
            del self._slots[self._head]
            self._head += 1
            self.token = slot.token
            if slot.event_time is not None:
                self.event_time = slot.event_time
            moved = True
        if moved:
            self.version += 1

    def idle(self, post_batch_token: Token | None) -> None:
        """The stream returned nothing: with nothing outstanding, its post-batch token is safe."""
        if post_batch_token is None or self._slots or post_batch_token == self.token:
            return
        self.token = post_batch_token
        self.version += 1
