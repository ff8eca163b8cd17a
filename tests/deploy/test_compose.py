"""docker-compose.yml: valid against the Compose specification (check-jsonschema's built-in schema),
every service the docs name exists, the workers run the repository's config.toml with settings the
model accepts, and the printing consumer prints what it receives (real RabbitMQ)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import yaml

from tests.conftest import AMQP_URL
from tests.deploy.support import ROOT, fanout_roles, package_version, settings_env_names
from tests.support.tools import require_tool
from worker.settings import load_settings

COMPOSE = ROOT / "docker-compose.yml"
CONFIG_PATH = "/etc/fanout-worker/config.toml"
WORKERS = ("tailer", "fanout-1", "fanout-2")


def services() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_compose_file_follows_the_compose_specification() -> None:
    # Given docker-compose.yml, When check-jsonschema validates it against the Compose spec,
    result = validate(COMPOSE)
    # Then it is valid.
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    # Given a copy with a key the specification does not have,
    broken = COMPOSE.read_text().replace("    image: redis:7.0", "    imagen: redis:7.0")
    assert broken != COMPOSE.read_text()
    (tmp_path / "docker-compose.yml").write_text(broken)
    # When it is validated, Then it fails, naming the key.
    result = validate(tmp_path / "docker-compose.yml")
    assert result.returncode != 0
    assert "imagen" in result.stdout + result.stderr


def documented_services() -> set[str]:
    """The services docs/deploy.md's compose table lists, and any that `docker compose` lines name."""
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    section = deploy.split("## Docker Compose", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M))
    for text in (deploy, (ROOT / "README.md").read_text()):
        for command in re.findall(r"docker compose (?:logs|restart|stop|start|up|kill)([^\n`]*)", text):
            names |= {w for w in command.split("#")[0].split() if not w.startswith("-")}
    return names


def test_every_service_the_docs_name_exists_and_every_service_is_documented() -> None:
    # Given the services the docs list or name in a command, and those of the compose file,
    documented = documented_services()
    # Then they are the same set.
    assert documented == set(services())


def test_the_workers_run_the_repositorys_config_with_known_settings() -> None:
    for name in WORKERS:
        service = services()[name]
        # Given a worker service, Then it mounts the repository's config.toml where --config reads it,
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert (COMPOSE.parent / mounts[CONFIG_PATH]).resolve() == (ROOT / "config.toml").resolve()
        command = service["command"]
        assert command[:3] == ["run", "--config", CONFIG_PATH]
        # runs a role the worker knows,
        assert command[command.index("--role") + 1] in fanout_roles()
        # and every variable it sets is a setting (an unknown FANOUT_ variable stops the worker).
        assert set(service["environment"]) <= settings_env_names()
    roles = [services()[n]["command"][-1] for n in WORKERS]
    assert roles == ["tailer", "fanout", "fanout"]
    # The image they run (and the consumer) is tagged with the release.
    for name in (*WORKERS, "consumer"):
        assert services()[name]["image"] == f"fanout-worker:{package_version()}"


def test_the_consumer_reads_the_queues_the_config_declares() -> None:
    # Given the repository's config.toml, Then the consumer reads exactly its consumer queues.
    declared = {q.name for q in load_settings(ROOT / "config.toml").topology.queues}
    assert set(services()["consumer"]["command"]) == declared


async def test_the_printing_consumer_prints_and_acks_what_it_receives(unique: str) -> None:
    # Given a queue of this test's own holding one message,
    queue_name = f"test.print.{unique}"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, auto_delete=False)
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(b'{"type": "post.created"}', message_id=f"post:{unique}:range:0:chunk:0"),
                routing_key=queue_name,
            )
            # When the compose file's consumer runs over it until one message is printed,
            result = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    str(ROOT / "deploy" / "compose" / "print_consumer.py"),
                    queue_name,
                    "--limit",
                    "1",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                env={"AMQP_URL": AMQP_URL, "PATH": ""},
                check=False,
            )
            # Then it printed the queue, routing key, message id and body, and acked the message.
            assert result.returncode == 0, result.stderr
            expected = f'{queue_name} {queue_name} post:{unique}:range:0:chunk:0 {{"type": "post.created"}}'
            assert result.stdout.splitlines() == [expected]
            declared = await channel.declare_queue(queue_name, passive=True)
            assert declared.declaration_result.message_count == 0
        finally:
            await queue.delete(if_unused=False, if_empty=False)


def test_the_printing_consumer_fails_clearly_on_a_missing_queue(unique: str) -> None:
    # Given a queue name nobody declared, When the consumer starts, Then it exits non-zero (compose
    # restarts it until the worker has declared its queues) and says which queue.
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "compose" / "print_consumer.py"), f"test.absent.{unique}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"AMQP_URL": AMQP_URL, "PATH": ""},
        check=False,
    )
    assert result.returncode != 0
    assert f"test.absent.{unique}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
