"""Logs: JSON lines with the bound event context, library logging intercepted, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from loguru import logger

from handlers.events import ChangeEvent
from worker.eventlog import event_logger
from worker.logs import configure


@pytest.fixture
def sink() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure("DEBUG", "json", out)
    yield out
    logger.remove()
    logging.basicConfig(handlers=[], force=True)


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_event_lines_carry_stream_op_id_and_token(sink: io.StringIO) -> None:
    event = ChangeEvent.from_raw(
        "posts",
        {"_id": {"_data": "82AB"}, "operationType": "insert", "documentKey": {"_id": "p1"}},
    )
    event_logger(event).info("handled")
    [line] = lines(sink)
    assert line["msg"] == "handled"
    assert (line["stream"], line["op"], line["post_id"], line["token"]) == ("posts", "insert", "p1", "82AB")


def test_library_logging_is_intercepted_and_redacted(sink: io.StringIO) -> None:
    logging.getLogger("aiormq.connection").warning("cannot connect to amqp://fanout:hunter2@mq:5672/")
    [line] = lines(sink)
    assert line["level"] == "WARNING"
    assert "amqp://fanout:***@mq:5672/" in line["msg"]
    assert "hunter2" not in sink.getvalue()


def test_bound_context_and_exceptions_are_redacted(sink: io.StringIO) -> None:
    try:
        raise ConnectionError("redis://:s3cret@cache:6379/0 refused")
    except ConnectionError:
        logger.bind(url="mongodb://app:s3cret@db/").exception("failed")
    assert "s3cret" not in sink.getvalue()
    [line] = lines(sink)
    assert line["url"] == "mongodb://app:***@db/"
    assert line["error"] == "ConnectionError"
    assert "redis://:***@cache:6379/0 refused" in line["traceback"]


# Every credential form a client library accepts, and malformed ones: (text, secret it holds).
CREDENTIAL_FORMS = [
    ("mongodb://app:pw-userinfo@db1:27017,db2/?replicaSet=rs0", "pw-userinfo"),
    ("mongodb+srv://app:pw-srv@cluster.example/", "pw-srv"),
    ("mongodb://app:pw#hash@db/", "pw#hash"),
    ("mongodb://app:pw?question@db/", "pw?question"),
    ("mongodb://app:pw/slash@db/", "pw/slash"),
    ("mongodb://app:pw@at@db/", "pw@at"),
    ("mongodb://app:pw:colon@db/", "pw:colon"),
    ("mongodb://db/?authSource=admin&tlsCertificateKeyFilePassword=pw-tlskey", "pw-tlskey"),
    ("mongodb://db/?authMechanismProperties=AWS_SESSION_TOKEN:pw-awstoken,SERVICE_NAME:x", "pw-awstoken"),
    ("redis://:pw-redis@cache:6379/0", "pw-redis"),
    ("rediss://user:pw-rediss@cache:6380/0", "pw-rediss"),
    ("redis://cache:6379/0?password=pw-query", "pw-query"),
    ("redis://cache/0?ssl_password=pw-sslq&db=1", "pw-sslq"),
    ("amqp://worker:pw-amqp@mq/vhost", "pw-amqp"),
    ("amqps://worker:pw-amqps@mq:5671/", "pw-amqps"),
    ("amqp://mq/?pass=pw-pass&heartbeat=5", "pw-pass"),
    ("amqp://mq/?pwd=pw-pwd", "pw-pwd"),
    ("amqp://mq/?secret=pw-secret", "pw-secret"),
    ("amqp://mq/?token=pw-token", "pw-token"),
    ("mongodb:/app:pw-oneslash@db", "pw-oneslash"),  # malformed: one slash
    ("app:pw-noscheme@db:27017", "pw-noscheme"),  # malformed: no scheme at all
    ("'amqp://worker:pw-quoted@mq/'", "pw-quoted"),  # inside a repr
]


@pytest.mark.parametrize(("text", "secret"), CREDENTIAL_FORMS)
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_credential_form_is_masked_in_text_and_json_logs(text: str, secret: str, fmt: str) -> None:
    # Given a sink of each format
    out = io.StringIO()
    configure("DEBUG", fmt, out)
    try:
        # When a credential reaches the message, the bound context and an exception
        try:
            try:
                raise OSError(111, f"refused by {text}")
            except OSError as inner:
                raise ConnectionError(f"cannot reach {text}") from inner
        except ConnectionError:
            logger.bind(url=text).exception("failed on {}", text)
        logging.getLogger("aiormq.connection").error("error with %s", text)
    finally:
        logger.remove()
        logging.basicConfig(handlers=[], force=True)
    # Then the secret is nowhere, and what is not secret stays readable
    assert secret not in out.getvalue()
    assert "***" in out.getvalue()


@pytest.mark.parametrize(
    "text",
    [
        "mongodb://db1:27017/?replicaSet=rs0&authSource=admin",
        "amqp://guest@mq/",
        "mail a@b.example about it",
        "resume token=82AB at 12:30:01",
    ],
)
def test_text_without_credentials_is_left_alone(text: str) -> None:
    from worker.logs import redact

    assert redact(text) == text
