"""Fixtures of the backend tests (helpers live in backend_helpers.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from adk_cancel.backends import backend_from_url
from adk_cancel.testing import RedisServer, free_port

from .backend_helpers import REDIS_SERVER, Cluster, requires_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(str(requires_redis.kwargs["reason"]))
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "redis"])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    # Built from URLs, as the app builds them.
    if request.param == "memory":
        result = Cluster("memory", False, lambda: backend_from_url("memory://"))
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = f"{server.url}?key_prefix=test-{uuid.uuid4().hex[:8]}&announce_ttl_s=3"
        result = Cluster("redis", True, lambda: backend_from_url(url))
    try:
        yield result
    finally:
        await result.close()
