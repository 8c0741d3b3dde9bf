from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import SAMPLES, TEST_AGENTS, build_app

# ADK's agent loader imports agents by directory name; put both agent folders on the path
# so tests share the very modules (and their OBSERVED lists) that the server runs.
for path in (str(SAMPLES), str(TEST_AGENTS)):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture
def observed() -> Iterator[list[dict[str, Any]]]:
    from slow_agent.agent import OBSERVED

    OBSERVED.clear()
    yield OBSERVED
    OBSERVED.clear()


@pytest.fixture
def app() -> Any:
    return build_app()


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def stubborn_client() -> Iterator[TestClient]:
    with TestClient(build_app(str(TEST_AGENTS), cancel_grace_s=0.3)) as c:
        yield c
