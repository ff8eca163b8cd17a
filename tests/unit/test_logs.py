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
