"""Run the real ``fanout-worker run`` process for fault tests, against WireMongo and the real services.

``Daemon`` starts the console script in its own process group, reads its stderr (the log) line by
line in a background thread, and can SIGKILL or SIGTERM it. ``Daemons`` is the per-test pool the
test modules' ``daemons`` fixture yields and cleans up: whatever still runs when the test ends is
SIGKILLed, so a failing test never leaks a worker.

Also here: ``worker_env`` (the environment a test daemon runs with), small WireMongo seeding helpers,
and ``AggregateRecorder``, which records every ``aggregate`` command WireMongo serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from bson import json_util

from tests.support.wire_mongo import WireMongo

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.toml"
EXECUTABLE = Path(sys.executable).parent / "fanout-worker"
DB = "social"
CHECKPOINTS = "fanout_checkpoints"
DEAD_LETTERS = "fanout_dead_letters"
GAPS = "fanout_gaps"
LEASES = "fanout_leases"
REDIS_URL = os.environ.get("FANOUT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")  # as in conftest


def job_settings(exchange: str) -> dict[str, str]:
    """The ``[fanout]`` section of a test's own job queues, for ``load_settings``."""
    return {k.removeprefix("FANOUT_FANOUT__").lower(): v for k, v in job_names(exchange).items()}


def job_names(exchange: str) -> dict[str, str]:
    """``[fanout]`` names derived from a test's exchange, as FANOUT_FANOUT__* variables."""
    return {
        "FANOUT_FANOUT__EXCHANGE": f"{exchange}.jobs",
        "FANOUT_FANOUT__ORDINARY_QUEUE": f"{exchange}.jobs.ordinary",
        "FANOUT_FANOUT__BULK_QUEUE": f"{exchange}.jobs.bulk",
        "FANOUT_FANOUT__DEFERRED_QUEUE": f"{exchange}.jobs.deferred",
        "FANOUT_FANOUT__DEAD_LETTER_EXCHANGE": f"{exchange}.jobs.dlx",
        "FANOUT_FANOUT__DEAD_LETTER_QUEUE": f"{exchange}.jobs.dead",
    }


def worker_env(wm: WireMongo, exchange: str, key_prefix: str, **overrides: str) -> dict[str, str]:
    """The environment of a test daemon: fast cadences, unique exchange and prefix, JSON logs.

    ``overrides`` are extra ``FANOUT_*`` variables, e.g. ``FANOUT_PIPELINE__MAX_TEXT_BYTES="1000"``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    env.update(
        {
            "FANOUT_MONGO__URI": wm.uri,
            "FANOUT_MONGO__SERVER_SELECTION_TIMEOUT_MS": "3000",
            "FANOUT_MONGO__MAX_AWAIT_TIME_MS": "200",
            "FANOUT_REDIS__URL": REDIS_URL,
            "FANOUT_LOG__FORMAT": "json",
            "FANOUT_RABBITMQ__EXCHANGE": exchange,
            "FANOUT_REDIS__KEY_PREFIX": key_prefix,
            "FANOUT_PIPELINE__CHECKPOINT_INTERVAL_SECONDS": "0.1",
            "FANOUT_PIPELINE__SHUTDOWN_DEADLINE_SECONDS": "5",
            "FANOUT_PIPELINE__RETRY_MAX_SECONDS": "1",
            "FANOUT_LEADER__TTL_SECONDS": "3",
            "FANOUT_LEADER__RENEW_INTERVAL_SECONDS": "1",
            # Any free port: the default 9464 would make concurrent daemons exit 3.
            "FANOUT_HEALTH__HOST": "127.0.0.1",
            "FANOUT_HEALTH__PORT": "0",
            # Leave the broker alone: the default consumer queues are shared and durable, binding them
            # to every test exchange would pile up test messages nobody consumes.
            "FANOUT_TOPOLOGY__DECLARE": "false",
            # Job queues of the test's own: jobs a killed daemon leaves behind must not reach
            # another test (tests/conftest.py's daemon_exchange deletes them afterwards).
            **job_names(exchange),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


class Daemon:
    """One ``fanout-worker run`` subprocess. Its stderr lines accumulate in ``lines``."""

    def __init__(
        self,
        env: Mapping[str, str],
        config: Path = CONFIG,
        name: str = "daemon",
        argv: list[str] | None = None,
    ) -> None:
        self.env = dict(env)  # to start another process like it (e.g. a fan-out worker)
        self.name = name
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv or [str(EXECUTABLE), "run", "--config", str(config)],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: signals reach it and nothing else
        )
        self._reader = threading.Thread(target=self._read, name=f"{name} stderr", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ logs
    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines parsed (lines that are not JSON are skipped)."""
        out: list[dict[str, Any]] = []
        for line in list(self.lines):
            with contextlib.suppress(orjson.JSONDecodeError):
                rec = orjson.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("level") == "ERROR"]

    def wait_for_log(self, substring: str, timeout: float = 10.0, start: int = 0) -> str:
        """Block until a stderr line (from index ``start`` on) contains ``substring``; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if substring in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(remaining, 0.1))
        raise AssertionError(
            f"{self.name}: no log line containing {substring!r} within {timeout}s "
            f"(exit code {self.proc.poll()}); log:\n{self.log_text()}"
        )

    def find_log(self, substring: str, start: int = 0) -> str | None:
        with self._cond:
            return next((line for line in self.lines[start:] if substring in line), None)

    async def log_line(self, substring: str, timeout: float = 10.0, start: int = 0) -> str:
        """``wait_for_log`` for async tests: polls without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while (line := self.find_log(substring, start)) is None:
            exited = self.proc.poll() is not None and not self._reader.is_alive()
            if exited or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: no log line containing {substring!r} within {timeout}s "
                    f"(exit code {self.proc.poll()}); log:\n{self.log_text()}"
                )
            await asyncio.sleep(0.02)
        return line

    async def exited(self, timeout: float = 15.0) -> int:
        """``wait`` for async tests."""
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not exit within {timeout}s; log:\n{self.log_text()}")
            await asyncio.sleep(0.02)
        self._reader.join(5)
        return code

    async def stopped(self, timeout: float = 15.0) -> int:
        """SIGTERM, then ``exited``."""
        self.terminate()
        return await self.exited(timeout)

    def log_text(self, last: int = 60) -> str:
        return "\n".join(self.lines[-last:])

    # ------------------------------------------------------------------ lifecycle
    def kill(self) -> None:
        """SIGKILL the whole process group (no shutdown code runs), and reap it."""
        if self.proc.poll() is None:  # never signal a reaped (possibly reused) process id
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM: the graceful stop."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the exit and return the code; the stderr reader is drained too."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s; log:\n{self.log_text()}"
            ) from None
        self._reader.join(5)
        return code

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the exit code."""
        self.terminate()
        return self.wait(timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class Daemons:
    """Every daemon a test starts; ``cleanup()`` (the fixture finalizer) kills those still running."""

    def __init__(self) -> None:
        self.started: list[Daemon] = []

    def spawn(
        self,
        env: Mapping[str, str],
        name: str = "daemon",
        config: Path = CONFIG,
        argv: list[str] | None = None,
    ) -> Daemon:
        """``fanout-worker run``, or the process ``argv`` names (its stderr read the same way)."""
        d = Daemon(env, config, name, argv)
        self.started.append(d)
        return d

    def cleanup(self) -> None:
        for d in self.started:
            d.cleanup()
            # Shown by pytest with a failing test's captured output.
            print(f"----- {d.name} (pid {d.pid}, exit {d.returncode}) log -----\n{d.log_text(200)}")


DEPLOYMENTS = ("all", "split")  # one process, or a tailer and a fan-out process


async def fanout_beside(
    daemons: Daemons, env: Mapping[str, str], deployment: str
) -> tuple[dict[str, str], Daemon | None]:
    """For ``split``: start a ``fanout`` process and return the environment of a ``tailer``; for
    ``all``, nothing to start and the environment unchanged."""
    if deployment == "all":
        return dict(env), None
    fanout = daemons.spawn({**env, "FANOUT_FANOUT__ROLE": "fanout"}, "fan-out")
    await fanout.log_line("running", 15)
    return {**env, "FANOUT_FANOUT__ROLE": "tailer"}, fanout


# ---------------------------------------------------------------------- WireMongo helpers
def seed_authors(wm: WireMongo, authors: Mapping[str, list[str]]) -> None:
    """A profile per author and per follower, and one follows edge per (follower, author)."""
    social = wm.db(DB)
    users = set(authors) | {f for followers in authors.values() for f in followers}
    for user in sorted(users):
        social.insert(
            "profiles",
            {
                "_id": user,
                "username": user,
                "display_name": f"User {user}",
                "avatar_url": f"https://cdn.example/{user}.png",
                "version": 1,
            },
        )
    for author, followers in authors.items():
        for follower in followers:
            social.insert("follows", {"follower_id": follower, "followee_id": author})


def checkpoint(wm: WireMongo, stream: str = "posts") -> dict[str, Any] | None:
    return wm.db(DB).find_one(CHECKPOINTS, {"_id": stream})


def token_position(token: Mapping[str, Any]) -> str:
    """WireMongo tokens ``{_data: hex}`` compare in change-log order as strings of equal length."""
    data = token["_data"]
    assert isinstance(data, str)
    return data


def checkpoint_past(wm: WireMongo, position: str, stream: str = "posts") -> bool:
    """The stream's checkpoint holds a token at or after ``position`` (tokens sort in log order)."""
    cp = checkpoint(wm, stream)
    return cp is not None and bool(cp.get("token")) and cp["token"]["_data"] >= position


async def wait_until(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``cond`` until it is truthy, without blocking the event loop (the collector needs it)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class AggregateRecorder:
    """Records every ``aggregate`` command WireMongo serves (WireMongo itself only counts them).

    It wraps WireMongo's ``aggregate`` handler (a private table; the stand-in has no public
    recording hook). Faults injected with ``fail_next`` act before handlers, so a failed aggregate
    is counted by ``wm.command_count`` but not recorded here.
    """

    def __init__(self, wm: WireMongo) -> None:
        self.calls: list[tuple[float, dict[str, Any]]] = []  # (time.monotonic(), command)
        handlers: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = wm._handlers
        inner = handlers["aggregate"]

        def record(db: str, cmd: dict[str, Any]) -> dict[str, Any]:
            self.calls.append((time.monotonic(), dict(cmd)))
            return inner(db, cmd)

        handlers["aggregate"] = record

    @property
    def commands(self) -> list[dict[str, Any]]:
        return [cmd for _, cmd in list(self.calls)]

    def change_stream_calls(self, collection: str, since: int = 0) -> list[tuple[float, dict[str, Any]]]:
        """(time.monotonic(), ``$changeStream`` stage) of each change-stream aggregate on
        ``collection``, in order, from the ``since``-th recorded command on."""
        out = []
        for at, cmd in list(self.calls)[since:]:
            pipeline = cmd.get("pipeline") or []
            if cmd.get("aggregate") == collection and pipeline and "$changeStream" in pipeline[0]:
                out.append((at, dict(pipeline[0]["$changeStream"])))
        return out

    def change_streams(self, collection: str, since: int = 0) -> list[dict[str, Any]]:
        """The ``$changeStream`` stage of each change-stream aggregate on ``collection``."""
        return [stage for _, stage in self.change_stream_calls(collection, since)]


def insert_positions(wm: WireMongo, collection: str = "posts") -> dict[Any, str]:
    """``_id`` → change-log position (token ``_data``) of every insert into ``social.collection``.

    An ``_id`` that cannot be a key (an embedded document) is keyed by its extended JSON.
    """
    out: dict[Any, str] = {}
    for ev in wm.change_events():
        if ev["operationType"] == "insert" and ev["ns"] == {"db": DB, "coll": collection}:
            key = ev["documentKey"]["_id"]
            out[json_util.dumps(key) if isinstance(key, (dict, list)) else key] = token_position(ev["_id"])
    return out
