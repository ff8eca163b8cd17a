"""What a repair command shows while it runs: a bar on a terminal, a log line now and then
otherwise (a service's journal), and one summary line at the end; with a metrics file, the same
counts as Prometheus gauges for node_exporter's textfile collector (a one-shot command has no
endpoint to scrape)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from loguru import logger
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

_LOG_EVERY_SECONDS = 10.0
_WRITE_EVERY_SECONDS = 1.0  # the metrics file: often enough for a scrape, not once per batch
_BAR = 30


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None,
        out: TextIO,
        tty: bool | None = None,
        log_every_seconds: float = _LOG_EVERY_SECONDS,
        metrics_file: Path | None = None,
    ) -> None:
        self._every = log_every_seconds
        self._metrics = _TextfileMetrics(metrics_file, what) if metrics_file is not None else None
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
        if self._metrics is not None:
            self._metrics.update(done, self.total, counts, now)

    def finish(self) -> None:
        if self._tty:
            self._out.write("\n")
            self._out.flush()
        if self._metrics is not None:
            self._metrics.finish()


class _TextfileMetrics:
    """Gauges labelled by the run, rewritten atomically (write_to_textfile renames a temporary
    file) at most once a second, and once more at the end with ``finished`` 1."""

    def __init__(self, path: Path, run: str) -> None:
        self._path = path
        self._registry = CollectorRegistry()
        labels = ["run"]

        def gauge(name: str, text: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"fanout_repair_{name}", text, [*labels, *extra], registry=self._registry)

        self._done = gauge("done", "Items (posts, or profiles for --snapshots) handled so far.")
        self._total = gauge("total", "Items in the run's window when it started.")
        self._counts = gauge("count", "The run's counters (posts, jobs, invalid...).", ("counter",))
        self._updated = gauge("last_update_timestamp_seconds", "When these numbers were written.")
        self._finished = gauge("finished", "1 once the run has ended (done or stopped).")
        self._run = run
        self._written = 0.0
        self._finished.labels(run).set(0)

    def update(self, done: int, total: int | None, counts: Mapping[str, int], now: float) -> None:
        self._done.labels(self._run).set(done)
        if total is not None:
            self._total.labels(self._run).set(total)
        for name, value in counts.items():
            self._counts.labels(self._run, name).set(value)
        if now - self._written >= _WRITE_EVERY_SECONDS:
            self._written = now
            self._write()

    def finish(self) -> None:
        self._finished.labels(self._run).set(1)
        self._write()

    def _write(self) -> None:
        self._updated.labels(self._run).set(time.time())
        try:
            write_to_textfile(str(self._path), self._registry)
        except OSError as exc:  # the repair goes on: its numbers are in the log too
            logger.warning("repair: could not write the metrics file {} ({})", self._path, exc)
