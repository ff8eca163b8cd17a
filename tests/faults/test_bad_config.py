"""Bad configuration and a bad environment: one clear message, a documented exit code, no secrets.

These run the real ``fanout-worker`` process, so the exit codes are the ones operators see.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
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
    assert "MongoDB is unreachable: 127.0.0.1:1: connection refused" in result.stderr
    assert_no_secret(result)


def test_unreachable_redis_at_start_exits_3_without_leaking_the_password(wire: WireMongo) -> None:
    result = run(
        ["run", "--config", "config.toml"],
        {"FANOUT_MONGO__URI": wire.uri, "FANOUT_REDIS__URL": "redis://:r3dis-s3cret@127.0.0.1:1/0"},
    )
    assert result.returncode == 3
    assert "Redis is unreachable: 127.0.0.1:1: connection refused" in result.stderr
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
    assert "RabbitMQ is unreachable: 127.0.0.1:1: connection refused" in result.stderr
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


COMMANDS = [
    pytest.param(["run"], id="run"),
    pytest.param(["check"], id="check"),
    pytest.param(["config"], id="config"),
    pytest.param(["checkpoint", "show"], id="checkpoint-show"),
    pytest.param(["demo", "--offline", "--users", "10", "--posts", "1", "--edits", "0"], id="demo-offline"),
]
GOOD_AMQP = "amqp://u:amqp-s3cret@127.0.0.1:1/"
# (environment, config file, the field the line must name); each holds a secret from SECRETS.
BAD_INPUTS = [
    pytest.param(
        {"FANOUT_MONGO__URI": "http://app:m0ngo-s3cret@db/"}, "", "mongo.uri", id="mongo-wrong-scheme"
    ),
    pytest.param(
        {"FANOUT_MONGO__URI": "mongodb://app:m0ngo-s3cret#x@db/"},
        "",
        "mongo.uri",
        id="mongo-hash-in-password",
    ),
    pytest.param(
        {"FANOUT_MONGO__URI": "mongodb://app:m0ngo-s3cret@db:0/"}, "", "mongo.uri", id="mongo-port-0"
    ),
    pytest.param(
        {"FANOUT_MONGO__URI": "mongodb://db/?password=m0ngo-s3cret"},
        "",
        "mongo.uri",
        id="mongo-password-param",
    ),
    pytest.param(
        {"FANOUT_REDIS__URL": "redis://:r3dis-s3cret/x@cache/0"},
        "",
        "redis.url",
        id="redis-slash-in-password",
    ),
    pytest.param(
        {"FANOUT_RABBITMQ__URL": "amqp://u:amqp-s3cret@mq:99999/"}, "", "rabbitmq.url", id="amqp-bad-port"
    ),
    pytest.param({"FANOUT_RABBITMQ__URL": "amqp://u:amqp-s3cret@/"}, "", "rabbitmq.url", id="amqp-no-host"),
    pytest.param(
        {"FANOUT_RABBITMQ__URL": GOOD_AMQP, "FANOUT_PIPELIN__CHUNK_SIZE": "5"},
        "",
        "FANOUT_PIPELINE__CHUNK_SIZE",
        id="typo-in-a-variable",
    ),
    pytest.param(
        {"FANOUT_RABBITMQ__URL": GOOD_AMQP, "FANOUT_PIPELINE": "{not json"},
        "",
        "FANOUT_PIPELINE",
        id="bad-json",
    ),
    pytest.param(
        {},
        f"[rabbitmq]\nurl = '{GOOD_AMQP}'\n[pipeline]\nchunk_size = true\n",
        "pipeline.chunk_size",
        id="bool-as-number",
    ),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("env", "toml", "field"), BAD_INPUTS)
def test_every_command_refuses_bad_config_in_one_line_without_the_secret(
    tmp_path: Path, command: list[str], env: dict[str, str], toml: str, field: str
) -> None:
    # Given a config file and environment holding a credential and one mistake
    config = tmp_path / "config.toml"
    config.write_text(toml)
    # When any command runs
    result = run([*command, "--config", str(config)], env, timeout=30)
    # Then: exit 2, one line on stderr naming the field, no traceback, no credential anywhere
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert field in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert_no_secret(result)


def test_check_names_host_port_and_cause_for_each_service_without_the_password() -> None:
    # Given every service pointed at a closed port, with passwords in the URIs
    result = run(
        ["check"],
        {
            "FANOUT_MONGO__URI": "mongodb://admin:m0ngo-s3cret@127.0.0.1:1/?replicaSet=rs0",
            "FANOUT_MONGO__SERVER_SELECTION_TIMEOUT_MS": "500",
            "FANOUT_REDIS__URL": "redis://:r3dis-s3cret@127.0.0.1:1/0",
            "FANOUT_RABBITMQ__URL": "amqp://fanout:amqp-s3cret@127.0.0.1:1/",
        },
    )
    # Then each FAIL row says where and why (not an exception class), and exit is 3
    assert result.returncode == 3, result.stdout + result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    for service in ("mongodb", "redis", "rabbitmq"):
        assert "FAIL" in rows[service]
        assert "127.0.0.1:1: connection refused" in rows[service], rows[service]
    assert "Error" not in result.stdout
    assert_no_secret(result)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: every client times out."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_check_says_timed_out_for_services_that_never_answer(silent_port: int) -> None:
    result = run(
        ["check"],
        {
            "FANOUT_MONGO__URI": f"mongodb://127.0.0.1:{silent_port}/",
            "FANOUT_MONGO__SERVER_SELECTION_TIMEOUT_MS": "500",
            "FANOUT_REDIS__URL": f"redis://127.0.0.1:{silent_port}/0",
            "FANOUT_RABBITMQ__URL": f"amqp://u:amqp-s3cret@127.0.0.1:{silent_port}/",
            "FANOUT_RABBITMQ__CONFIRM_TIMEOUT_SECONDS": "1",
        },
    )
    assert result.returncode == 3, result.stdout + result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    for service in ("mongodb", "redis", "rabbitmq"):
        assert f"127.0.0.1:{silent_port}: timed out" in rows[service], rows[service]
    assert_no_secret(result)


def test_check_says_authentication_failed_for_wrong_redis_and_rabbitmq_credentials() -> None:
    result = run(
        ["check"],
        {
            "FANOUT_MONGO__URI": "mongodb://127.0.0.1:1/",
            "FANOUT_MONGO__SERVER_SELECTION_TIMEOUT_MS": "300",
            "FANOUT_REDIS__URL": "redis://nobody:r3dis-s3cret@127.0.0.1:6379/15",
            "FANOUT_RABBITMQ__URL": "amqp://guest:amqp-s3cret@127.0.0.1:5672/",
        },
    )
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "127.0.0.1:6379: authentication failed" in rows["redis"], result.stdout
    assert "127.0.0.1:5672: authentication failed" in rows["rabbitmq"], result.stdout
    assert_no_secret(result)
