from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from support import SAMPLES, TEST_AGENTS, build_app

# ADK's agent loader imports agents by directory name: the test agents come first, so tests
# share the very modules (and the OBSERVED list) that the server runs. samples/ is there for
# the agents only it has (local_agent).
for path in (str(SAMPLES), str(TEST_AGENTS)):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture
def observed() -> Iterator[list[dict[str, Any]]]:
    from observations import OBSERVED

    OBSERVED.clear()
    yield OBSERVED
    OBSERVED.clear()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client for tests that talk to served apps by URL."""
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
def app() -> Any:
    return build_app()


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def stubborn_client() -> Iterator[TestClient]:
    with TestClient(build_app(cancel_grace_s=0.3)) as c:
        yield c
