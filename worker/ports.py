"""Interfaces the runtime needs from MongoDB, beyond what handlers and the cache need."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from handlers.events import ChangeEvent, Token


class ChangeCursor(Protocol):
    async def try_next(self) -> ChangeEvent | None:
        """The next event, or None after waiting up to the server's max await time with none."""
        ...

    @property
    def resume_token(self) -> Token | None:
        """Where to resume to continue after everything returned so far; the post-batch token when idle."""
        ...


class ChangeFeed(Protocol):
    """One collection's change stream."""

    stream: str

    def open(self, resume_after: Token | None) -> AbstractAsyncContextManager[ChangeCursor]:
        """Open the stream after ``resume_after``, or from now when None."""
        ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    stream: str
    token: Token
    # Cluster time of the last event handled before ``token`` (None when only idle tokens were saved).
    event_time: datetime | None
    saved_at: datetime


class CheckpointStore(Protocol):
    async def load(self, stream: str) -> Checkpoint | None: ...

    async def save(self, checkpoint: Checkpoint) -> None: ...
