"""The real ``fanout-worker`` process as an operator meets it: sd_notify, health, metrics, CLI.

MongoDB is WireMongo, a wire-protocol test stand-in (not MongoDB); Redis and RabbitMQ are real.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


def _env(wm: WireMongo, unique: str, exchange: str = "", **extra: str) -> dict[str, str]:
    return worker_env(wm, exchange or f"test.ops.{unique}", f"t{unique}:", **extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_daemon_speaks_sd_notify_and_serves_health_and_metrics(
    wire: WireMongo, unique: str, tmp_path: Path, daemon_exchange: str
) -> None:
    # Given a systemd-like notify socket and a free health port
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(15)
    port = _free_port()
    env = _env(
        wire,
        unique,
        daemon_exchange,
        NOTIFY_SOCKET=str(sock_path),
        WATCHDOG_USEC="400000",
        FANOUT_HEALTH__HOST="127.0.0.1",
        FANOUT_HEALTH__PORT=str(port),
    )
    proc = subprocess.Popen([str(BIN), "run", "--config", "config.toml"], env=env, stderr=subprocess.PIPE)
    try:
        # When it starts, it says READY=1, then pings the watchdog as its streams make progress
        seen: list[str] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not ("READY=1" in seen and seen.count("WATCHDOG=1") >= 2):
            seen.extend(notify.recv(4096).decode().splitlines())
        assert "READY=1" in seen
        assert seen.count("WATCHDOG=1") >= 2
        assert any(line.startswith("STATUS=leader epoch") for line in seen)

        # and serves liveness, readiness and Prometheus metrics
        def get(path: str) -> tuple[int, bytes]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read()

        assert get("/healthz")[0] == 200
        status, body = get("/readyz")
        assert status == 200
        assert json.loads(body)["role"] == "leader"
        metrics = get("/metrics")[1].decode()
        assert "fanout_leader 1.0" in metrics
        assert 'fanout_last_progress_age_seconds{stream="posts"}' in metrics
        assert 'fanout_change_stream_lag_seconds{stream="profiles"}' in metrics
        # the idle streams save their post-batch tokens, so checkpoint age appears within seconds
        deadline = time.monotonic() + 10
        while 'fanout_checkpoint_age_seconds{stream="profiles"}' not in metrics:
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
            metrics = get("/metrics")[1].decode()

        # When SIGTERM arrives, it says STOPPING=1 and exits 0
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in seen:
            seen.extend(notify.recv(4096).decode().splitlines())
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        notify.close()


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=60)


def test_check_reports_every_service(wire: WireMongo, unique: str) -> None:
    ok = _cli(["check"], _env(wire, unique))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name in ("config", "mongodb", "redis", "rabbitmq"):
        assert any(line.startswith(name) and " OK " in line for line in ok.stdout.splitlines()), ok.stdout

    bad = _cli(["check"], _env(wire, unique, FANOUT_RABBITMQ__URL="amqp://u:s3cr3t@127.0.0.1:1/"))
    assert bad.returncode == 3
    assert any(line.startswith("rabbitmq") and "FAIL" in line for line in bad.stdout.splitlines())
    assert "s3cr3t" not in bad.stdout + bad.stderr


def test_config_prints_effective_settings_with_passwords_masked(wire: WireMongo, unique: str) -> None:
    env = _env(
        wire, unique, FANOUT_RABBITMQ__URL="amqp://user:s3cr3t@mq:5672/vh", FANOUT_PIPELINE__CHUNK_SIZE="7"
    )
    result = _cli(["config", "--config", "config.toml"], env)
    assert result.returncode == 0
    assert 'url = "amqp://user:***@mq:5672/vh"' in result.stdout
    assert "chunk_size = 7" in result.stdout
    assert "s3cr3t" not in result.stdout


def test_checkpoint_show_and_reset(wire: WireMongo, unique: str) -> None:
    env = _env(wire, unique)
    db = wire.db("social")
    db.insert(
        "fanout_checkpoints",
        {"_id": "posts", "token": {"_data": "8200"}, "event_time": None, "saved_at": None, "epoch": 3},
    )
    shown = _cli(["checkpoint", "show"], env)
    assert shown.returncode == 0
    assert "posts" in shown.stdout
    assert "none: starts from now" in shown.stdout  # profiles has no checkpoint

    # A live lease means a worker is running: reset is refused unless forced
    from datetime import UTC, datetime, timedelta

    db.insert(
        "fanout_leases",
        {
            "_id": "fanout-worker",
            "owner": "w1",
            "epoch": 3,
            "expires_at": datetime.now(UTC) + timedelta(minutes=5),
        },
    )
    refused = _cli(["checkpoint", "reset", "--stream", "posts", "--to", "now"], env)
    assert refused.returncode == 1
    assert "holds a live lease" in refused.stderr

    forced = _cli(
        ["checkpoint", "reset", "--stream", "posts", "--to-time", "2026-01-02T03:04:05Z", "--force"], env
    )
    assert forced.returncode == 0, forced.stderr
    doc = db.find_one("fanout_checkpoints", {"_id": "posts"})
    assert doc is not None
    assert doc["token"] is None
    assert doc["start_at"].replace(tzinfo=UTC) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert doc["epoch"] == 3

    unknown = _cli(["checkpoint", "reset", "--stream", "comments", "--to", "now", "--force"], env)
    assert unknown.returncode == 2


def test_version_and_help() -> None:
    version = subprocess.run([str(BIN), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("fanout-worker ")
    for args in (["--help"], ["run", "--help"], ["checkpoint", "reset", "--help"], ["check", "--help"]):
        out = subprocess.run([str(BIN), *args], capture_output=True, text=True, check=True).stdout
        assert "usage: fanout-worker" in out
