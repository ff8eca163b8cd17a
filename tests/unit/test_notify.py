"""sd_notify over a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.notify import Notifier, watchdog_loop


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its path, as systemd provides in NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_exact_datagrams(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    notifier = Notifier({"NOTIFY_SOCKET": path})
    try:
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.status("leader epoch 3; posts: 10 handled")
        assert notifier.watchdog()
        assert notifier.stopping()
        assert notifier.status("two\nlines\r\n  here")
        assert received(sock) == b"READY=1"
        assert received(sock) == b"STATUS=leader epoch 3; posts: 10 handled"
        assert received(sock) == b"WATCHDOG=1"
        assert received(sock) == b"STOPPING=1"
        assert received(sock) == b"STATUS=two lines here"  # no second assignment smuggled in
    finally:
        notifier.close()


def test_abstract_socket() -> None:
    name = f"fanout-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    try:
        assert notifier.ready()
        assert received(sock) == b"READY=1"
    finally:
        notifier.close()
        sock.close()


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234", "@"])
def test_noop_without_a_usable_socket(value: str) -> None:
    env = {"NOTIFY_SOCKET": value} if value else {}
    notifier = Notifier(env)
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.status("x")
    notifier.close()


def test_default_env_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled


def test_a_vanished_systemd_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert Notifier(env).watchdog_interval() == interval


async def test_watchdog_pings_only_while_alive(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    state = {"alive": False, "ticks": 0}

    def status() -> str:
        state["ticks"] += 1
        state["alive"] = state["ticks"] == 2  # alive (by the /healthz rule) for tick 3 only
        return f"tick {state['ticks']}"

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(watchdog_loop(notifier, lambda: bool(state["alive"]), 0.01, status))
    got: list[bytes] = []
    try:
        async with asyncio.timeout(5):
            while len(got) < 6:
                got.append(await loop.sock_recv(sock, 4096))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
    # No ping while not alive (ticks 1, 2, 4, 5); one when alive (tick 3)
    assert got == [
        b"STATUS=tick 1",
        b"STATUS=tick 2",
        b"WATCHDOG=1",
        b"STATUS=tick 3",
        b"STATUS=tick 4",
        b"STATUS=tick 5",
    ]


async def test_watchdog_survives_a_failing_status(systemd: tuple[socket.socket, str]) -> None:
    sock, path = systemd
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": path})

    def status() -> str:
        raise RuntimeError("bug")

    task = asyncio.create_task(watchdog_loop(notifier, lambda: True, 0.01, status))
    try:
        async with asyncio.timeout(5):
            first = await asyncio.get_running_loop().sock_recv(sock, 4096)
            second = await asyncio.get_running_loop().sock_recv(sock, 4096)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
    assert (first, second) == (b"WATCHDOG=1", b"WATCHDOG=1")
