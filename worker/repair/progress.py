"""What a repair command shows while it runs: a bar on a terminal, a log line now and then
otherwise (a service's journal), and one summary line at the end."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TextIO

from loguru import logger

_LOG_EVERY_SECONDS = 10.0
_BAR = 30


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None,
        out: TextIO,
        tty: bool | None = None,
        log_every_seconds: float = _LOG_EVERY_SECONDS,
    ) -> None:
        self._every = log_every_seconds
        self._what = what
        self.total = total
        self._out = out
        self._tty = out.isatty() if tty is None else tty
        self._started = time.monotonic()
        self._logged = self._started

    def update(self, done: int, counts: Mapping[str, int]) -> None:
        now = time.monotonic()
        rate = done / max(now - self._started, 1e-6)
        of = f"/{self.total}" if self.total is not None else ""
        detail = " ".join(f"{k} {v}" for k, v in counts.items())
        if self._tty:
            frac = min(done / self.total, 1.0) if self.total else 0.0
            bar = "#" * round(frac * _BAR)
            self._out.write(f"\r{self._what} [{bar:<{_BAR}}] {done}{of} ({rate:.0f}/s) {detail}  ")
            self._out.flush()
        elif now - self._logged >= self._every:
            self._logged = now
            logger.info("{}: {}{} ({:.0f}/s) {}", self._what, done, of, rate, detail)

    def finish(self) -> None:
        if self._tty:
            self._out.write("\n")
            self._out.flush()
