"""``/healthz``, ``/readyz`` and ``/metrics`` on one small asyncio HTTP/1.1 server, no dependency.

Bounded: at most 8 KiB of request head, sent within 2 s; at most 256 connections at once; one
request per connection. Idle or slow clients cannot starve the probes: when every slot is taken,
the oldest connection that has not sent its request head yet is dropped to make room for the new
one. Everything runs on the event loop, so any answer from ``/healthz`` also proves the loop is
turning. Listens on loopback unless ``health.host`` says otherwise (the container sets 0.0.0.0).

* ``/healthz`` (liveness): is the process working? 503 only when the event loop's heartbeat, or a
  leader's stream, showed no life for ``watchdog_seconds``. A stream is alive while its getMores
  come back, while it retries reaching MongoDB, and while its reader waits for room in flight
  (backpressure: a dependency is away and ``/readyz`` says which). Restarting such a worker would
  only make it exit 3 at start. The systemd watchdog is fed from the same rule (``worker_alive``).
* ``/readyz``: 200 when the role is known (leader or standby), the worker is not stopping, every
  ready check passes within 2 s and no stream of the leader is failing to (re)open (``streams``).
* ``/metrics``: the Prometheus text of the worker's own registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger
from prometheus_client import CollectorRegistry

from worker.observe.metrics import CONTENT_TYPE, build_registry, render, reopening

if TYPE_CHECKING:
    from worker.stats import WorkerView

MAX_HEAD_BYTES = 8 * 1024
MAX_CONNECTIONS = 256
READ_TIMEOUT_SECONDS = 2.0  # a probe sends its head at once: anything slower is idle or hostile
CHECK_TIMEOUT_SECONDS = 2.0
JSON = "application/json"
KNOWN_ROLES = ("leader", "standby", "fanout")

ReadyCheck = Callable[[], Awaitable[bool]]


def _role(worker: WorkerView) -> str:
    return worker.role


def _stopping(worker: WorkerView) -> bool:
    return worker.stop.is_set()


def stale_parts(worker: WorkerView, watchdog_seconds: float) -> dict[str, float]:
    """Seconds since each part showed life, for those over ``watchdog_seconds``: empty when alive.

    The parts: the event loop (its heartbeat task) and, on a leader that is not stopping, each
    stream (``alive_at``: a getMore came back, a reopen was tried, or the reader is waiting for room
    in flight or for its checkpoint). A standby or a stopping worker tails nothing.
    """
    if _stopping(worker):
        return {}
    now = time.monotonic()
    ages: dict[str, float] = {}
    ages["event loop"] = now - worker.heartbeat
    if _role(worker) == "leader":
        for p in worker.pipelines:
            ages[p.stream] = now - p.alive_at
    return {part: round(age, 1) for part, age in ages.items() if age > watchdog_seconds}


def worker_alive(worker: WorkerView, watchdog_seconds: float) -> bool:
    """For the systemd watchdog: the same rule as ``/healthz``."""
    return not stale_parts(worker, watchdog_seconds)


def status_line(worker: WorkerView) -> str:
    """One line for ``systemctl status``: role, epoch, and per stream handled / in flight."""
    parts = [f"{_role(worker)} epoch {worker.epoch}"]
    parts += [f"{p.stream}: {p.stats.handled} handled, {p.in_flight} in flight" for p in worker.pipelines]
    return "; ".join(parts)


def _response(status: int, body: bytes, content_type: str, head_only: bool = False, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Cache-Control: no-store\r\n{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)


def _json(status: int, payload: Mapping[str, Any], head_only: bool = False, extra: str = "") -> bytes:
    return _response(status, orjson.dumps(payload) + b"\n", JSON, head_only, extra)


class HealthServer:
    def __init__(
        self,
        worker: WorkerView,
        host: str,
        port: int,
        watchdog_seconds: float,
        *,
        registry: CollectorRegistry | None = None,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        check_timeout: float = CHECK_TIMEOUT_SECONDS,
    ) -> None:
        self._worker = worker
        self._host = host
        self._port = port
        self._watchdog = watchdog_seconds
        self._registry = registry if registry is not None else build_registry(worker)
        self._read_timeout = read_timeout
        self._check_timeout = check_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        # Connections still waiting for their request head, oldest first: the ones evicted for room.
        self._waiting: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}
        self.evicted = 0

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for), once started."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=MAX_HEAD_BYTES)
        logger.info("health and metrics on http://{}:{}/", self._host, self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS and self._waiting:
            self._evict_oldest_waiting()
        busy = len(self._connections) >= MAX_CONNECTIONS
        if task is not None:
            self._connections.add(task)
        try:
            if busy:  # every slot is answering a request: nothing idle to drop
                response = _json(503, {"error": "too many connections"})
            else:
                self._waiting[writer] = task
                try:
                    response = await self._read_and_answer(reader, writer)
                finally:
                    self._waiting.pop(writer, None)
            if response:
                writer.write(response)
                async with asyncio.timeout(self._read_timeout):
                    await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            self._waiting.pop(writer, None)
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except Exception:  # a peer that does not read: drop it
                writer.transport.abort()

    def _evict_oldest_waiting(self) -> None:
        """Drop the oldest connection that has not sent its request head: its slot serves a new one."""
        writer = next(iter(self._waiting))
        task = self._waiting.pop(writer)
        if task is not None:
            self._connections.discard(task)
        self.evicted += 1
        writer.transport.abort()  # its reader sees the connection lost; its task ends by itself

    async def _read_and_answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        try:
            async with asyncio.timeout(self._read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return _json(408, {"error": "request head not received in time"})
        except asyncio.LimitOverrunError:
            return _json(431, {"error": f"request head over {MAX_HEAD_BYTES} bytes"})
        except asyncio.IncompleteReadError:
            return b""  # the client went away, or was evicted for room
        self._waiting.pop(writer, None)  # answering now: no longer idle
        request = head.decode("latin-1").split("\r\n", 1)[0].split(" ")
        if len(request) != 3 or not request[2].startswith("HTTP/1."):
            return _json(400, {"error": "bad request line"})
        method, target = request[0], request[1]
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "method not allowed"}, extra="Allow: GET, HEAD\r\n")
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/healthz":
            status, payload = self.liveness()
        elif path == "/readyz":
            status, payload = await self.readiness()
        elif path == "/metrics":
            try:
                body = render(self._registry)
            except Exception as exc:  # a bug in a collector must not kill the server
                logger.opt(exception=exc).error("metrics rendering failed")
                return _json(500, {"error": "metrics rendering failed"}, head_only)
            return _response(200, body, CONTENT_TYPE, head_only)
        else:
            return _json(404, {"error": "not found"}, head_only)
        return _json(status, payload, head_only)

    def liveness(self) -> tuple[int, dict[str, Any]]:
        worker = self._worker
        role = _role(worker)
        stale = stale_parts(worker, self._watchdog)
        if stale:
            return 503, {
                "status": "stale",
                "role": role,
                "seconds_since_progress": stale,
                "watchdog_seconds": self._watchdog,
            }
        waiting = {p.stream: w for p in worker.pipelines if (w := p.waiting_for)}
        if waiting and role == "leader" and not _stopping(worker):
            return 200, {"status": "ok", "role": role, "waiting_for": waiting}
        return 200, {"status": "ok", "role": role}

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        worker = self._worker
        role = _role(worker)
        checks = worker.ready_checks
        names = list(checks)
        results = await asyncio.gather(*(self._check(checks[name]) for name in names))
        stopping = _stopping(worker)
        # A leader's stream that fails to (re)open or read is not ready, whatever the checks say.
        wall = time.time()
        failing = {p.stream: state for p in worker.pipelines if (state := reopening(p, wall))}
        failing = failing if role == "leader" else {}
        ready = role in KNOWN_ROLES and not stopping and all(r == "ok" for r in results) and not failing
        payload = {
            "ready": ready,
            "role": role,
            "stopping": stopping,
            "checks": dict(zip(names, results, strict=True)),
        }
        if failing:
            payload["streams"] = failing
        return (200 if ready else 503), payload

    async def _check(self, check: ReadyCheck) -> str:
        try:
            async with asyncio.timeout(self._check_timeout):
                return "ok" if await check() else "failed"
        except TimeoutError:
            return "timeout"
        except Exception as exc:
            return f"error: {type(exc).__name__}"
