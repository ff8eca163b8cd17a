"""Fixtures of the fault suite: a WireMongo per test, seeded with the test module's ``FOLLOWERS``
(profiles and follow edges), and the pool of daemon subprocesses, killed at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.daemon import Daemons, seed_authors
from tests.support.wire_mongo import WireMongo


@pytest.fixture
def wm(request: pytest.FixtureRequest) -> Iterator[WireMongo]:
    with WireMongo() as server:
        followers = getattr(request.module, "FOLLOWERS", None)
        if followers is not None:
            seed_authors(server, followers)
        yield server


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    pool = Daemons()
    yield pool
    pool.cleanup()
