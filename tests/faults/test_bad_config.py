"""Bad configuration and a bad environment: one clear message, a documented exit code, no secrets.

These run the real ``fanout-worker`` process, so the exit codes are the ones operators see.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.wire_mongo import WireMongo

BIN = Path(sys.executable).with_name("fanout-worker")
SECRETS = ("m0ngo-s3cret", "r3dis-s3cret", "amqp-s3cret")


def run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    base.update({"FANOUT_LOG__FORMAT": "text", **(env or {})})
    return subprocess.run([str(BIN), *args], env=base, capture_output=True, text=True, timeout=timeout)


def assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    for secret in SECRETS:
        assert secret not in output, f"credential leaked: {output}"


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[pipeline]\nchunk_size = -1\n", "pipeline.chunk_size"),
        ("[pipeline]\nchunk_size = 'many'\n", "pipeline.chunk_size"),
        ("[pipeline]\nchunk_sise = 10\n", "pipeline.chunk_sise"),
        ("[redis]\nttl_jitter = 2\n", "redis.ttl_jitter"),
        ("[log]\nlevel = 'LOUD'\n", "log.level"),
        ("[pipeline]\non_history_lost = 'skip'\n", "pipeline.on_history_lost"),
        ("[leader]\nttl_seconds = 2\nrenew_interval_seconds = 1.5\n", "leader"),
        ("[rabbitmq]\nurl = 'amqp://u:amqp-s3cret@h/'\npublish_window = 0\n", "rabbitmq.publish_window"),
        ("[mongo\nuri = 'x'\n", "config file"),
    ],
)
def test_invalid_setting_exits_2_naming_the_field(tmp_path: Path, toml: str, field: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(toml)
    result = run(["run", "--config", str(config)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert field in lines[0]
    assert "Traceback" not in result.stderr
    assert_no_secret(result)


def test_env_override_is_validated_too(tmp_path: Path) -> None:
    result = run(["run", "--config", "config.toml"], {"FANOUT_PIPELINE__MAX_ATTEMPTS": "zero"})
    assert result.returncode == 2
    assert "pipeline.max_attempts" in result.stderr


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_config_file_exits_2(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.toml" if kind == "missing" else tmp_path
    result = run(["run", "--config", str(path)])
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def wire() -> Iterator[WireMongo]:
    with WireMongo() as wm:
        yield wm


def test_unreachable_mongodb_at_start_exits_3_without_leaking_the_password() -> None:
    result = run(
        ["run", "--config", "config.toml"],
        {
            "FANOUT_MONGO__URI": "mongodb://admin:m0ngo-s3cret@127.0.0.1:1/?replicaSet=rs0",
            "FANOUT_MONGO__SERVER_SELECTION_TIMEOUT_MS": "500",
        },
    )
    assert result.returncode == 3
    assert "MongoDB is unreachable" in result.stderr
    assert_no_secret(result)


def test_unreachable_redis_at_start_exits_3_without_leaking_the_password(wire: WireMongo) -> None:
    result = run(
        ["run", "--config", "config.toml"],
        {"FANOUT_MONGO__URI": wire.uri, "FANOUT_REDIS__URL": "redis://:r3dis-s3cret@127.0.0.1:1/0"},
    )
    assert result.returncode == 3
    assert "Redis is unreachable" in result.stderr
    assert_no_secret(result)


def test_unreachable_rabbitmq_at_start_exits_3_without_leaking_the_password(wire: WireMongo) -> None:
    result = run(
        ["run", "--config", "config.toml"],
        {
            "FANOUT_MONGO__URI": wire.uri,
            "FANOUT_RABBITMQ__URL": "amqp://fanout:amqp-s3cret@127.0.0.1:1/",
            "FANOUT_RABBITMQ__CONFIRM_TIMEOUT_SECONDS": "2",
        },
    )
    assert result.returncode == 3
    assert "RabbitMQ is unreachable" in result.stderr
    assert_no_secret(result)


def test_wrong_rabbitmq_password_exits_3_without_leaking_it(wire: WireMongo) -> None:
    result = run(
        ["run", "--config", "config.toml"],
        {
            "FANOUT_MONGO__URI": wire.uri,
            "FANOUT_RABBITMQ__URL": "amqp://guest:amqp-s3cret@127.0.0.1:5672/",
            "FANOUT_RABBITMQ__CONFIRM_TIMEOUT_SECONDS": "3",
        },
    )
    assert result.returncode == 3
    assert_no_secret(result)
