"""SIGTERM drains and exits 0; a second signal while stuck exits at once (the real process)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.daemon import worker_env
from tests.support.wire_mongo import WireMongo

BIN = Path(sys.executable).with_name("fanout-worker")


@pytest.fixture
def wire() -> Iterator[WireMongo]:
    with WireMongo() as wm:
        yield wm


def _start(wm: WireMongo, unique: str, exchange: str, **extra: str) -> subprocess.Popen[bytes]:
    env = worker_env(
        wm,
        exchange,
        f"t{unique}:",
        FANOUT_LOG__FORMAT="text",
        FANOUT_HEALTH__ENABLED="false",
        **extra,
    )
    return subprocess.Popen([str(BIN), "run", "--config", "config.toml"], env=env, stderr=subprocess.PIPE)


def _wait_for_line(proc: subprocess.Popen[bytes], text: str, timeout: float = 15) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if text in line:
            return
    raise AssertionError(f"no log line with {text!r}")


@pytest.mark.timeout(60)
def test_sigterm_saves_checkpoints_and_exits_0(wire: WireMongo, unique: str, daemon_exchange: str) -> None:
    proc = _start(wire, unique, daemon_exchange)
    try:
        _wait_for_line(proc, "stream profiles starting")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        saved = {d["_id"] for d in wire.find("social", "fanout_checkpoints")}
        assert saved == {"posts", "profiles"}
        lease = wire.find("social", "fanout_leases")[0]
        assert lease["expires_at"] is not None  # released: expires now, a standby may take over
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.timeout(60)
def test_second_signal_exits_at_once_while_a_drain_is_stuck(
    wire: WireMongo, unique: str, daemon_exchange: str
) -> None:
    # Given a worker whose posts cannot be published (no queue would confirm... the broker is
    # unreachable), so a graceful drain would wait out the whole 30 s deadline
    db = wire.db("social")
    db.insert("profiles", {"_id": "u1", "username": "u1", "display_name": "U", "version": 1})
    db.insert("follows", {"follower_id": "f1", "followee_id": "u1"})
    proc = _start(wire, unique, daemon_exchange, FANOUT_PIPELINE__SHUTDOWN_DEADLINE_SECONDS="30")
    try:
        _wait_for_line(proc, "stream profiles starting")
        # cut RabbitMQ off for this worker by blocking its publishes: stop it from confirming
        subprocess.run(
            ["rabbitmqctl", "set_vm_memory_high_watermark", "0.000001"], capture_output=True, check=True
        )
        try:
            db.insert("posts", {"_id": "p1", "author_id": "u1", "text": "x"})
            time.sleep(1.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
        finally:
            subprocess.run(
                ["rabbitmqctl", "set_vm_memory_high_watermark", "0.4"], capture_output=True, check=True
            )
        assert code == 130
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
