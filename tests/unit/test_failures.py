"""worker/failures: a client's exception becomes a short cause, whatever the client wraps it in."""

from __future__ import annotations

import socket
import ssl

import pytest
from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.failures import cause


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            ServerSelectionTimeoutError("db:1: [Errno 111] Connection refused (configured timeouts…)"),
            "connection refused",
        ),
        (
            ServerSelectionTimeoutError("No servers found yet, Timeout: 0.5s, Topology Description: …"),
            "timed out",
        ),
        (
            ServerSelectionTimeoutError("db:27017: SSL handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED]"),
            "TLS handshake failed",
        ),
        (
            ServerSelectionTimeoutError("db:27017: [Errno -2] Name or service not known"),
            "host name not found",
        ),
        (OperationFailure("Authentication failed.", code=18), "authentication failed"),
        (
            chained(RedisConnectionError("Error 111 connecting"), ConnectionRefusedError(111, "refused")),
            "connection refused",
        ),
        (RedisTimeoutError("Timeout reading from cache:6379"), "timed out"),
        (AuthenticationError("invalid username-password pair or user is disabled."), "authentication failed"),
        (
            chained(AMQPConnectionError(1, "[SSL: WRONG_VERSION_NUMBER]"), ssl.SSLError(1, "wrong version")),
            "TLS handshake failed",
        ),
        (ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"), "authentication failed"),
        (
            chained(AMQPConnectionError(-2, "x"), socket.gaierror(-2, "Name or service not known")),
            "host name not found",
        ),
        (TimeoutError(), "timed out"),
        (ValueError("something else"), "ValueError"),
    ],
)
def test_the_cause_is_read_from_the_chain_then_the_message(exc: BaseException, expected: str) -> None:
    assert cause(exc) == expected
