"""Session leases (the backend half of the busy policies): one holder per session, a
first-come-first-served queue with a bound, and, in Redis, the same across processes, taken
atomically, renewed while held and lapsing when the holder's process dies.

Memory leases are one process's: the tests that need two processes run on Redis only.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import build_app, observed_of, run_body, session_path, wait_until

from adk_cancel import SessionKey
from adk_cancel.backends import (
    BackendUnavailable,
    CancelBackend,
    LeaseAnswer,
    RedisBackend,
    SessionLeases,
    backend_from_url,
)
from adk_cancel.testing import RedisServer, SimpleNode

from .backend_helpers import Cluster

pytestmark = pytest.mark.timeout(60)

KEY = SessionKey("app", "user", "session")
OTHER = SessionKey("app", "user", "other")


async def pair(cluster: Cluster) -> tuple[SimpleNode, SimpleNode]:
    """Two nodes; on memory both use one backend (leases are one process's)."""
    a = await cluster.node()
    if cluster.shared:
        return a, await cluster.node()
    return a, SimpleNode(a.backend, node_id="other-node")


def leases(node: SimpleNode) -> SessionLeases:
    backend = node.backend
    assert isinstance(backend, SessionLeases)
    return backend


async def ask(
    node: SimpleNode, run_id: str, mode: str = "try", key: SessionKey = KEY, max_queued: int = 10
) -> LeaseAnswer:
    return await leases(node).acquire_lease(key, node.node_id, run_id, mode, max_queued)  # type: ignore[arg-type]


async def test_one_holder_per_session(cluster: Cluster) -> None:
    a, b = await pair(cluster)
    assert (await ask(a, "r1")).granted
    assert (await ask(a, "r1")).granted, "asking again keeps it"
    refused = await ask(b, "r2")
    assert not refused.granted and refused.holder == (a.node_id, "r1") and not refused.full
    assert not (await ask(b, "r2", "jump")).granted, "jump takes a free session only"
    assert (await ask(b, "r3", key=OTHER)).granted, "another session is free"
    await leases(a).release_lease(KEY, a.node_id, "r1")
    assert (await ask(b, "r2")).granted


async def test_the_queue_is_first_come_first_served_and_bounded(cluster: Cluster) -> None:
    a, b = await pair(cluster)
    assert (await ask(a, "holder")).granted
    for node, run in ((b, "q1"), (a, "q2"), (b, "q3")):
        answer = await ask(node, run, "queue", max_queued=3)
        assert not answer.granted and not answer.full
    full = await ask(a, "q4", "queue", max_queued=3)
    assert full.full and not full.granted
    assert (await ask(b, "q1", "queue", max_queued=3)).full is False, "a queued run keeps its place"

    await leases(a).release_lease(KEY, a.node_id, "holder")
    # Free, but q1 is first: a try and the others in the queue wait their turn.
    assert not (await ask(a, "late")).granted
    assert not (await ask(a, "q2", "queue")).granted
    assert not (await ask(b, "q3", "queue")).granted
    assert (await ask(b, "q1", "queue")).granted
    await leases(b).release_lease(KEY, b.node_id, "q1")
    assert not (await ask(b, "q3", "queue")).granted
    assert (await ask(a, "q2", "queue")).granted


async def test_jump_takes_a_free_session_ahead_of_the_queue(cluster: Cluster) -> None:
    a, b = await pair(cluster)
    assert (await ask(a, "holder")).granted
    assert not (await ask(b, "queued", "queue")).granted
    await leases(a).release_lease(KEY, a.node_id, "holder")
    assert (await ask(a, "interrupting", "jump")).granted
    await leases(a).release_lease(KEY, a.node_id, "interrupting")
    assert (await ask(b, "queued", "queue")).granted


async def test_leaving_the_queue(cluster: Cluster) -> None:
    a, b = await pair(cluster)
    assert (await ask(a, "holder")).granted
    assert not (await ask(b, "gone", "queue")).granted
    assert not (await ask(a, "next", "queue")).granted
    await leases(b).release_lease(KEY, b.node_id, "gone")  # its client left
    await leases(a).release_lease(KEY, a.node_id, "holder")
    assert (await ask(a, "next", "queue")).granted


# -- Redis: across processes --------------------------------------------------------------------


def redis_backend(server: RedisServer, prefix: str, ttl_s: float = 1.5) -> RedisBackend:
    backend = backend_from_url(f"{server.url}?key_prefix={prefix}&announce_ttl_s={ttl_s}")
    assert isinstance(backend, RedisBackend)
    return backend


async def connected(backend: RedisBackend) -> SimpleNode:
    node = SimpleNode(backend)
    await backend.connect(node)
    return node


async def test_concurrent_acquires_grant_exactly_one(redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    nodes = [await connected(redis_backend(redis_server, prefix)) for _ in range(4)]
    try:
        for trial in range(20):
            key = SessionKey("app", "user", f"s{trial}")
            asking = [(n, f"r{i}", m) for i, n in enumerate(nodes) for m in ("try", "jump")]
            answers = await asyncio.gather(*(ask(n, r, m, key) for n, r, m in asking))
            pairs = zip(asking, answers, strict=True)
            granted = {(n.node_id, r) for (n, r, _), a in pairs if a.granted}
            refused = {a.holder for a in answers if not a.granted}
            assert len(granted) == 1, f"trial {trial}: {granted}"
            assert refused == granted, "every refused run names the one holder"
    finally:
        for node in nodes:
            await node.backend.disconnect()


async def test_a_held_lease_is_renewed_and_a_dead_holders_lapses(
    redis_server: RedisServer,
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    holder = await connected(redis_backend(redis_server, prefix, ttl_s=0.9))
    other = await connected(redis_backend(redis_server, prefix, ttl_s=0.9))
    try:
        assert (await ask(holder, "r1")).granted
        await asyncio.sleep(2.0)  # more than twice the TTL: renewed meanwhile
        assert not (await ask(other, "r2")).granted
        await holder.backend.disconnect()  # its process is gone: nothing renews, nothing releases
        gone_at = time.monotonic()
        while not (await ask(other, "r2")).granted:
            assert time.monotonic() - gone_at < 0.9 + 0.5, "the lease outlived its TTL"
            await asyncio.sleep(0.02)
    finally:
        await other.backend.disconnect()


async def test_a_dead_workers_queued_runs_lose_their_place(redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    a = await connected(redis_backend(redis_server, prefix, ttl_s=0.6))
    b = await connected(redis_backend(redis_server, prefix, ttl_s=0.6))
    try:
        assert (await ask(a, "holder")).granted
        assert not (await ask(b, "dead", "queue")).granted  # b crashes: never asks again
        assert not (await ask(a, "alive", "queue")).granted
        await leases(a).release_lease(KEY, a.node_id, "holder")
        assert not (await ask(a, "alive", "queue")).granted, "the dead one is still first"
        deadline = time.monotonic() + 2.0
        while not (await ask(a, "alive", "queue")).granted:  # asking keeps its own place
            assert time.monotonic() < deadline, "a dead queued run kept the session"
            await asyncio.sleep(0.05)
    finally:
        await a.backend.disconnect()
        await b.backend.disconnect()


async def test_redis_down_is_backend_unavailable(redis_server: RedisServer) -> None:
    backend = redis_backend(redis_server, f"t-{uuid.uuid4().hex[:8]}")
    node = await connected(backend)
    try:
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await ask(node, "r1")
        with pytest.raises(BackendUnavailable):
            await backend.release_lease(KEY, node.node_id, "r1")
        assert time.monotonic() - started < 3.0
    finally:
        await backend.disconnect()


class _NoLeases:
    """A custom backend of the kind written before leases existed: the CancelBackend methods
    only, one process."""

    async def connect(self, node: Any) -> None:
        return None

    async def disconnect(self) -> None:
        return None

    def announce(self, run: Any) -> None:
        return None

    def withdraw(self, run: Any) -> None:
        return None

    async def list_remote(self, key: SessionKey) -> list[Any]:
        return []

    async def cancel_remote(self, order: Any) -> list[Any]:
        return []

    async def list_user_remote(self, app_name: str, user_id: str) -> list[Any]:
        return []

    def save_record(self, record: Any, keep: int, ttl_s: float) -> None:
        return None

    async def list_records(self, key: SessionKey, limit: int) -> list[Any]:
        return []


def test_a_backend_without_leases_gets_this_workers_decision(observed: list[Any]) -> None:
    backend = _NoLeases()
    assert isinstance(backend, CancelBackend) and not isinstance(backend, SessionLeases)
    app = build_app(cancel_backend=backend, on_busy="reject")
    with TestClient(app) as client:
        sid = client.post("/apps/slow_agent/users/u/sessions", json={}).json()["id"]
        thread = threading.Thread(
            target=lambda: client.post("/run", json=run_body(sid, "tool 30")), daemon=True
        )
        thread.start()
        wait_until(lambda: observed_of(observed, sid, "tool_started"))
        refused = client.post("/run", json=run_body(sid, "quick"))
        assert refused.status_code == 409, refused.text
        assert [r["route"] for r in refused.json()["runs"]] == ["run"]
        assert client.post(session_path(sid) + ":cancel").status_code == 200
        thread.join(5)
        assert client.post("/run", json=run_body(sid, "quick")).status_code == 200
