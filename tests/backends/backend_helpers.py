"""Helpers of the backend tests: ``eventually`` and a cluster of ``SimpleNode`` registries
(``adk_cancel.testing.SimpleNode``) over one backend kind."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from adk_cancel.backends import BackendUnavailable, CancelBackend
from adk_cancel.testing import SimpleNode

REDIS_SERVER = shutil.which("redis-server")
requires_redis = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not on PATH: install it (apt-get install redis-server) to run "
    "the Redis backend tests; CI installs it",
)


async def eventually(
    probe: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 3.0,
    interval: float = 0.01,
    retry_on: tuple[type[BaseException], ...] = (BackendUnavailable,),
) -> Any:
    """Await ``probe()`` until it returns something truthy (announcements are asynchronous;
    a backend that is reconnecting raises ``BackendUnavailable`` meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await probe()
        except retry_on as exc:
            value = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


# -- two connected nodes over each backend kind -----------------------------------------------


@dataclass
class Cluster:
    """Nodes sharing one backend kind; ``shared`` says whether they see each other."""

    kind: str
    shared: bool
    make_backend: Callable[[], CancelBackend]
    nodes: list[SimpleNode] = field(default_factory=list)

    async def node(self, backend: CancelBackend | None = None) -> SimpleNode:
        node = SimpleNode(backend if backend is not None else self.make_backend())
        await node.backend.connect(node)
        self.nodes.append(node)
        return node

    async def close(self) -> None:
        for node in self.nodes:
            await node.close()
            await node.backend.disconnect()
