"""The backend contract's operations part, on every backend URL scheme we ship: user-wide
cancel orders (``scope="user"``), ``list_user_remote``, and run records (``save_record``,
``list_records``: shared through Redis, trimmed and expiring; none on ``memory://``)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import TEST_AGENTS, memory_services, run_body, session_path

import adk_cancel
from adk_cancel import CancelOrder, RunInfo, SessionKey
from adk_cancel.testing import SimpleNode

from .backend_helpers import Cluster, eventually

pytestmark = pytest.mark.timeout(60)

APP, USER = "app", "user"


def key(session: str, user: str = USER, app: str = APP) -> SessionKey:
    return SessionKey(app, user, session)


async def user_ids(node: SimpleNode, user: str = USER, app: str = APP) -> set[str]:
    list_user = node.backend.list_user_remote
    return {r.run_id for r in await list_user(app, user)}


def record(session: str, n: int, ended_at: float | None = None) -> RunInfo:
    now = time.time() if ended_at is None else ended_at
    return RunInfo(
        run_id=f"run-{n}-{uuid.uuid4().hex[:6]}",
        app_name=APP,
        user_id=USER,
        session_id=session,
        invocation_id=f"e-{n}",
        route="run",
        started_at=now - 1,
        worker="w",
        status="finished",
        ended_at=now,
    )


async def test_a_user_wide_order_reaches_every_session_of_that_user_only(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    mine = [a.start_run(key("s1")), a.start_run(key("s2")), b.start_run(key("s3"))]
    other_user = a.start_run(key("s1", user="mallory"))
    other_app = a.start_run(key("s1", app="other"))
    if cluster.shared:

        async def listed() -> bool:
            return len(await user_ids(b)) == 2

        await eventually(listed)
        assert await user_ids(b) == {mine[0].run_id, mine[1].run_id}
        assert await user_ids(b, "mallory") == {other_user.run_id}
    else:
        assert await user_ids(b) == set()

    result = await b.backend.cancel_remote(CancelOrder.for_user(APP, USER, "bye", timeout_s=2))

    if cluster.shared:
        assert sorted(r.session_id or "" for r in result) == ["s1", "s2"]
        assert all(r.stopped and r.stopped_by == "abort" for r in result)
        assert not a.is_running(mine[0].run_id) and not a.is_running(mine[1].run_id)
    else:
        assert result == []
    # The requester's own run is its registry's to cancel; other users' and apps' are untouched.
    assert b.is_running(mine[2].run_id)
    assert a.is_running(other_user.run_id) and a.is_running(other_app.run_id)
    # The holder's registry (SimpleNode here) matched the order by user, not by session "".
    local = await b.cancel_here(CancelOrder.for_user(APP, USER, "bye", timeout_s=2))
    assert [r.run_id for r in local] == [mine[2].run_id]


def test_the_wire_keeps_orders_without_a_scope_session_wide() -> None:
    order = CancelOrder.for_user(APP, USER, "bye")
    assert CancelOrder.from_json(order.to_json()) == order
    wire = json.loads(order.to_json())
    assert wire["scope"] == "user" and wire["key"] == [APP, USER, ""]
    # A message from a worker that predates scope: a session-wide order, as it meant.
    del wire["scope"]
    old = CancelOrder.from_json(json.dumps(wire))
    assert old.scope == "session"
    assert old.covers(key("")) and not old.covers(key("s1"))
    assert order.covers(key("s1")) and not order.covers(key("s1", user="mallory"))
    assert not order.covers(key("s1", app="other"))


async def test_records_are_shared_trimmed_and_newest_first(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    saved = [record("s1", n) for n in range(5)]
    for item in saved:
        a.backend.save_record(item, 3, 60)
    b.backend.save_record(record("s2", 9), 3, 60)
    if not cluster.shared:
        assert await b.backend.list_records(key("s1"), 50) == []
        return

    async def three() -> bool:
        return len(await b.backend.list_records(key("s1"), 50)) == 3

    await eventually(three)
    listed = await b.backend.list_records(key("s1"), 50)
    assert [r.run_id for r in listed] == [r.run_id for r in saved[::-1][:3]]
    assert listed[0] == saved[-1]
    assert [r.run_id for r in await b.backend.list_records(key("s1"), 2)] == [
        r.run_id for r in saved[::-1][:2]
    ]
    assert len(await a.backend.list_records(key("s2"), 50)) == 1
    assert await a.backend.list_records(key("s1", user="mallory"), 50) == []


async def test_records_expire(cluster: Cluster) -> None:
    if not cluster.shared:
        pytest.skip("memory:// keeps no records in the backend")
    a, b = await cluster.node(), await cluster.node()
    a.backend.save_record(record("s1", 1), 50, 0.3)

    async def listed() -> bool:
        return bool(await b.backend.list_records(key("s1"), 50))

    await eventually(listed)
    await asyncio.sleep(0.4)
    assert await b.backend.list_records(key("s1"), 50) == []


class LegacyBackend:
    """A custom backend written against the interface before operations: no user listing,
    no records. It shares nothing (like memory://)."""

    def __init__(self) -> None:
        self.node: Any = None

    async def connect(self, node: Any) -> None:
        self.node = node

    async def disconnect(self) -> None:
        self.node = None

    def announce(self, run: RunInfo) -> None:
        return None

    def withdraw(self, run: RunInfo) -> None:
        return None

    async def list_remote(self, key: SessionKey) -> list[RunInfo]:
        return []

    async def cancel_remote(self, order: CancelOrder) -> list[Any]:
        return []


def test_a_backend_without_the_operations_methods_still_serves_them_locally(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = adk_cancel.get_fast_api_app(
        agents_dir=str(TEST_AGENTS), cancel_backend=LegacyBackend(), **memory_services()
    )
    with TestClient(app) as client:
        sid = client.post("/apps/slow_agent/users/u/sessions", json={}).json()["id"]
        for _ in range(2):
            assert client.post("/run", json=run_body(sid, "quick")).status_code == 200
        records = client.get(session_path(sid) + "/runs", params={"status": "all"}).json()
        assert [r["status"] for r in records["runs"]] == ["finished", "finished"]
        assert records["unreachable"] is None
        assert client.post("/apps/slow_agent/users/u:cancel").status_code == 404
    warned = [r.getMessage() for r in caplog.records if "has no save_record()" in r.getMessage()]
    assert len(warned) == 1, "said once, not per run"
