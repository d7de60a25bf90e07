"""Fixtures the serving tests share: each online-state backend on fresh storage."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tailored.serve.redis_state import RedisState
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.state import OnlineState
from tests.serve.helpers import drop_prefix, with_prefix

Opener = Callable[[], OnlineState]


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix on the test Redis, deleted afterwards."""
    prefix = "tailored-test-" + uuid.uuid4().hex
    yield prefix
    drop_prefix(redis_url, prefix)


@pytest.fixture(params=["sqlite", "redis"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the backend on the same storage each call (a file, or a Redis prefix)."""
    opened: list[OnlineState] = []
    if request.param == "sqlite":
        path = tmp_path / "state.db"

        def make() -> OnlineState:
            return SQLiteState(path)
    else:
        url = with_prefix(
            request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        )

        def make() -> OnlineState:
            return RedisState.from_url(url)

    def tracked() -> OnlineState:
        opened.append(make())
        return opened[-1]

    yield tracked
    for s in opened:
        s.close()


@pytest.fixture
def state(reopen: Opener) -> OnlineState:
    return reopen()
