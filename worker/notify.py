"""systemd ``sd_notify`` without a dependency: READY, STOPPING, WATCHDOG and STATUS datagrams.

Everything is a no-op when ``NOTIFY_SOCKET`` is unset (not started by systemd with
``Type=notify``), and a failed send is logged, never raised: telling systemd must not stop the work.
The watchdog is pinged only while the worker is alive by the same rule as ``/healthz``
(``worker.health.stale_parts``), so a worker whose streams are wedged is restarted by systemd
although its event loop still turns, and one that is waiting out a dependency is not.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

from loguru import logger

MAX_STATUS_CHARS = 400


def _address(value: str) -> str | None:
    """``/path`` or ``@abstract`` (Linux abstract namespace: a leading NUL byte)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        logger.warning("NOTIFY_SOCKET {!r} is not a path or an abstract socket; not notifying systemd", value)
    return None


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram. False when disabled or the send failed."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            if not self._failed:  # once: a missing systemd would otherwise log every watchdog tick
                logger.warning("could not notify systemd ({}); going on", exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """One line: a newline in ``text`` would start another assignment."""
        line = " ".join(text.split())[:MAX_STATUS_CHARS]
        return self.send(f"STATUS={line}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of ``WATCHDOG_USEC``; None without a watchdog for this process."""
        try:
            usec = int(self._watchdog_usec)
            if self._watchdog_pid and int(self._watchdog_pid) != os.getpid():
                return None  # the watchdog is meant for another process (e.g. our parent)
        except ValueError:
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


async def watchdog_loop(
    notifier: Notifier,
    alive: Callable[[], bool],
    interval: float,
    status: Callable[[], str],
) -> None:
    """Every ``interval``: WATCHDOG=1 if ``alive()``, then STATUS=. Runs until cancelled."""
    while True:
        await asyncio.sleep(interval)
        if alive():
            notifier.watchdog()
        try:
            line = status()
        except Exception as exc:  # a status bug must not stop the watchdog
            logger.opt(exception=exc).warning("status line failed")
            continue
        notifier.status(line)
