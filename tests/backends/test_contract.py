"""The CancelBackend contract, run against every backend URL scheme we ship.

Each test connects two real ``SimpleNode`` registries, each through its own backend instance.
With ``memory://`` the nodes share nothing, so "remote" is always empty; with ``redis://``
each node sees and cancels the other's runs, and never its own. The last tests check the same
contract through the HTTP routes of a real app, and a custom backend object passed as
``cancel_backend=``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import TEST_AGENTS, memory_services, observed_of, run_body, session_path, wait_until

import adk_cancel
from adk_cancel import CancelledRun, CancelOrder, RunInfo, SessionKey
from adk_cancel.backends import BackendUnavailable, CancelBackend, LocalNode
from adk_cancel.testing import RedisServer, SimpleNode

from .backend_helpers import Cluster, eventually

pytestmark = pytest.mark.timeout(60)

KEY = SessionKey("app", "user", "session")


async def remote_ids(node: SimpleNode, key: SessionKey = KEY) -> set[str]:
    return {r.run_id for r in await node.backend.list_remote(key)}


async def settle(cluster: Cluster, probe: Any) -> None:
    """Redis: wait until ``probe()`` holds. Memory: announcements have nothing to propagate."""
    if cluster.shared:
        await eventually(probe)


def order(key: SessionKey = KEY, **overrides: Any) -> CancelOrder:
    return CancelOrder(**{"key": key, "reason": "test", "timeout_s": 2.0, **overrides})


async def test_backend_satisfies_the_protocols(cluster: Cluster) -> None:
    node = await cluster.node()
    assert isinstance(node.backend, CancelBackend)
    assert isinstance(node, LocalNode)


async def test_hot_path_never_raises_before_connect_or_after_disconnect(cluster: Cluster) -> None:
    backend = cluster.make_backend()
    info = RunInfo(
        run_id="r", app_name="a", user_id="u", session_id="s", route="run", started_at=0,
        worker="w",
    )  # fmt: skip
    backend.announce(info)
    backend.withdraw(info)
    node = SimpleNode(backend)
    await backend.connect(node)
    await backend.disconnect()
    backend.announce(info)
    backend.withdraw(info)
    await backend.disconnect()  # a second disconnect is harmless
    # A registry may stop and start again (e.g. an app's lifespan run twice in tests).
    await backend.connect(node)
    assert await backend.list_remote(KEY) == []
    await backend.disconnect()


async def test_nothing_anywhere(cluster: Cluster) -> None:
    a = await cluster.node()
    await cluster.node()
    assert await a.backend.list_remote(KEY) == []
    assert await a.backend.cancel_remote(order()) == []
    assert await a.backend.cancel_remote(order(wait=False)) == []


async def test_list_remote_shows_other_nodes_runs_never_own(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    run_a = a.start_run(KEY, invocation_id="inv-a")
    run_b = b.start_run(KEY)
    other = b.start_run(KEY._replace(session_id="other"))

    await settle(cluster, lambda: remote_ids(b))
    await settle(cluster, lambda: remote_ids(a))
    expected_at_b = {run_a.run_id} if cluster.shared else set()
    expected_at_a = {run_b.run_id} if cluster.shared else set()
    assert await remote_ids(b) == expected_at_b
    assert await remote_ids(a) == expected_at_a
    assert await remote_ids(a, other_key := KEY._replace(session_id="other")) == (
        {other.run_id} if cluster.shared else set()
    )
    assert await remote_ids(b, other_key) == set()
    if cluster.shared:
        [listed] = await b.backend.list_remote(KEY)
        assert listed.worker == a.node_id
        assert listed.invocation_id == "inv-a"
        assert (listed.app_name, listed.user_id, listed.session_id) == KEY
        assert listed.elapsed_ms >= 0


async def test_ended_runs_leave_the_remote_listing(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    run = a.start_run(KEY)
    await settle(cluster, lambda: remote_ids(b))
    await a.cancel_here(order())  # a local cancel: the run ends and is withdrawn
    assert not a.is_running(run.run_id)

    async def gone() -> bool:
        return await remote_ids(b) == set()

    await eventually(gone)


async def test_cancel_remote_stops_the_other_nodes_run(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    run = a.start_run(KEY)
    await settle(cluster, lambda: remote_ids(b))

    result = await b.backend.cancel_remote(order(reason="from b"))

    if not cluster.shared:
        assert result == []
        assert a.is_running(run.run_id) and a.cancel_calls == []
        return
    [outcome] = result
    assert outcome.run_id == run.run_id
    assert outcome.worker == a.node_id
    assert (outcome.stopped, outcome.stopped_by) == (True, "abort")
    assert not a.is_running(run.run_id)
    assert a.cancel_calls == [{"key": KEY, "invocation_id": None, "reason": "from b", "wait": True}]
    assert b.cancel_calls == []


async def test_cancel_remote_leaves_the_requesters_own_runs_alone(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    own = b.start_run(KEY)
    theirs = a.start_run(KEY)
    await settle(cluster, lambda: remote_ids(b))

    result = await b.backend.cancel_remote(order())

    # The core cancels the requester's runs through its registry; the backend must not.
    assert b.is_running(own.run_id) and b.cancel_calls == []
    assert [r.run_id for r in result] == ([theirs.run_id] if cluster.shared else [])
    assert a.is_running(theirs.run_id) is not cluster.shared
    # A node alone with its runs has nothing remote to cancel.
    c = await cluster.node()
    only_c = c.start_run(KEY._replace(session_id="c-only"))
    assert await c.backend.cancel_remote(order(KEY._replace(session_id="c-only"))) == []
    assert c.is_running(only_c.run_id)


async def test_cancel_remote_by_invocation_id(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    first = a.start_run(KEY, invocation_id="inv-1")
    second = a.start_run(KEY, invocation_id="inv-2")

    async def both_listed() -> bool:
        return len(await remote_ids(b)) == 2

    await settle(cluster, both_listed)
    result = await b.backend.cancel_remote(order(invocation_id="inv-2"))
    assert [r.run_id for r in result] == ([second.run_id] if cluster.shared else [])
    assert a.is_running(first.run_id)
    assert a.is_running(second.run_id) is not cluster.shared
    assert await b.backend.cancel_remote(order(invocation_id="nope")) == []
    assert a.is_running(first.run_id)


async def test_wait_false_answers_once_the_cancel_is_signalled(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    run = a.start_run(KEY, stop_delay_s=1.0)  # takes a second to wind down after the abort
    await settle(cluster, lambda: remote_ids(b))

    started = time.monotonic()
    result = await b.backend.cancel_remote(order(wait=False, timeout_s=10))
    elapsed = time.monotonic() - started

    assert elapsed < 0.5
    if cluster.shared:
        [outcome] = result
        assert (outcome.run_id, outcome.stopped, outcome.stopped_by) == (run.run_id, False, None)
        assert a.cancel_calls[0]["wait"] is False
        assert a.runs[run.run_id].abort.is_set()
        await eventually(lambda: _async(not a.is_running(run.run_id)))
    else:
        assert result == []


async def test_wait_is_bounded_by_timeout_s(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    run = a.start_run(KEY, stubborn=True)  # never ends after an abort
    await settle(cluster, lambda: remote_ids(b))

    started = time.monotonic()
    result = await b.backend.cancel_remote(order(timeout_s=0.3))
    elapsed = time.monotonic() - started

    assert elapsed < 1.3  # timeout_s plus a bounded margin for the round trips
    if cluster.shared:
        assert elapsed >= 0.3
        [outcome] = result
        assert (outcome.run_id, outcome.stopped) == (run.run_id, False)
        # The holder marked its run as cancelling, and the listing says so.
        listed = await eventually(lambda: _async([r for r in [*a.runs_here(KEY)] if r.cancelling]))
        assert listed[0].run_id == run.run_id
    else:
        assert result == []


async def test_keys_with_separators_do_not_collide(cluster: Cluster) -> None:
    a, b = await cluster.node(), await cluster.node()
    one = SessionKey("a:b", "u/1", "s 1")
    two = SessionKey("a", "b:u/1", "s 1")
    three = SessionKey("a:b", "u", "1/s 1")
    runs = {k: a.start_run(k) for k in (one, two, three)}
    for key, run in runs.items():
        await settle(cluster, lambda key=key: remote_ids(b, key))
        assert await remote_ids(b, key) == ({run.run_id} if cluster.shared else set())
    result = await b.backend.cancel_remote(order(one))
    assert [r.run_id for r in result] == ([runs[one].run_id] if cluster.shared else [])
    assert a.is_running(runs[two].run_id) and a.is_running(runs[three].run_id)


async def test_many_nodes_answer_one_cancel(cluster: Cluster) -> None:
    requester = await cluster.node()
    holders = [await cluster.node() for _ in range(3)]
    started = {h.start_run(KEY).run_id for h in holders}

    async def all_listed() -> bool:
        return await remote_ids(requester) == started

    await settle(cluster, all_listed)
    result = await requester.backend.cancel_remote(order())
    assert {r.run_id for r in result} == (started if cluster.shared else set())
    assert all(r.stopped_by == "abort" for r in result)


async def _async(value: Any) -> Any:
    return value


# -- through the HTTP routes of a real app ---------------------------------------------------


def backend_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_http_cancel_and_list_on_one_worker(
    kind: str, request: pytest.FixtureRequest, observed: list[dict[str, Any]]
) -> None:
    app = adk_cancel.get_fast_api_app(
        agents_dir=str(TEST_AGENTS), cancel_backend=backend_url(kind, request), **memory_services()
    )
    with TestClient(app) as client:
        sid = client.post("/apps/slow_agent/users/u/sessions", json={}).json()["id"]
        assert client.post(session_path(sid) + ":cancel").status_code == 404
        thread = threading.Thread(
            target=lambda: client.post("/run", json=run_body(sid, "tool 30")), daemon=True
        )
        thread.start()
        wait_until(lambda: observed_of(observed, sid, "tool_started"))
        [listed] = client.get(session_path(sid) + "/runs").json()["runs"]
        answer = client.post(session_path(sid) + ":cancel")
        assert answer.status_code == 200, answer.text
        [run] = answer.json()["runs"]
        assert run["run_id"] == listed["run_id"]
        assert (run["stopped"], run["stopped_by"]) == (True, "abort")
        thread.join(5)
        assert observed_of(observed, sid, "tool_cancelled")
        assert client.get(session_path(sid) + "/runs").json()["runs"] == []
        follow_up = client.post("/run", json=run_body(sid, "quick"))
        assert follow_up.status_code == 200, follow_up.text


class PeerBackend:
    """A custom backend: pretends one other worker holds a run of every session it is asked
    about, and records what the core calls. ``down`` makes the remote part unreachable."""

    PEER = "peer-worker"

    def __init__(self) -> None:
        self.node: LocalNode | None = None
        self.calls: list[tuple[str, Any]] = []
        self.down = False
        self.lock = threading.Lock()

    def _record(self, name: str, value: Any) -> None:
        with self.lock:
            self.calls.append((name, value))

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.calls]

    async def connect(self, node: LocalNode) -> None:
        self.node = node
        self._record("connect", node.node_id)

    async def disconnect(self) -> None:
        self._record("disconnect", None)
        self.node = None

    def announce(self, run: RunInfo) -> None:
        self._record("announce", run)

    def withdraw(self, run: RunInfo) -> None:
        self._record("withdraw", run)

    def _peer_run(self, key: SessionKey) -> RunInfo:
        return RunInfo(
            run_id=f"peer-{key.session_id}", app_name=key.app_name, user_id=key.user_id,
            session_id=key.session_id, route="run_sse", started_at=time.time(), worker=self.PEER,
        )  # fmt: skip

    async def list_user_remote(self, app_name: str, user_id: str) -> list[RunInfo]:
        self._record("list_user_remote", (app_name, user_id))
        if self.down:
            raise BackendUnavailable("the peer bus is down")
        return []

    def save_record(self, record: RunInfo, keep: int, ttl_s: float) -> None:
        self._record("save_record", record)

    async def list_records(self, key: SessionKey, limit: int) -> list[RunInfo]:
        self._record("list_records", key)
        if self.down:
            raise BackendUnavailable("the peer bus is down")
        return []

    async def list_remote(self, key: SessionKey) -> list[RunInfo]:
        self._record("list_remote", key)
        if self.down:
            raise BackendUnavailable("peer bus is down")
        return [self._peer_run(key)]

    async def cancel_remote(self, order: CancelOrder) -> list[CancelledRun]:
        key, wait = order.key, order.wait
        self._record("cancel_remote", order)
        if self.down:
            raise BackendUnavailable("peer bus is down")
        await asyncio.sleep(0)
        run = self._peer_run(key)
        return [
            CancelledRun(
                run_id=run.run_id, route=run.route, worker=self.PEER, stopped=wait,
                stopped_by="abort" if wait else None,
            )
        ]  # fmt: skip


def test_custom_backend_object(observed: list[dict[str, Any]]) -> None:
    backend = PeerBackend()
    assert isinstance(backend, CancelBackend)
    app = adk_cancel.get_fast_api_app(
        agents_dir=str(TEST_AGENTS),
        cancel_backend=backend,
        **memory_services(),
    )
    with TestClient(app) as client:
        assert backend.names() == ["connect"]
        registry: adk_cancel.RunRegistry = app.state.adk_cancel
        assert backend.node is registry and backend.calls[0][1] == registry.node_id

        path = session_path("s1")
        [peer] = client.get(path + "/runs").json()["runs"]
        assert peer["worker"] == PeerBackend.PEER
        answer = client.post(path + ":cancel", json={"reason": "remote only"})
        assert answer.status_code == 200, answer.text
        assert [r["worker"] for r in answer.json()["runs"]] == [PeerBackend.PEER]
        [sent] = [v for n, v in backend.calls if n == "cancel_remote"]
        assert (sent.key, sent.reason, sent.wait) == (
            SessionKey("slow_agent", "u", "s1"),
            "remote only",
            True,
        )

        # A local run is announced with its invocation id and withdrawn when it ends; the
        # cancel answer holds both the local and the remote run.
        sid = client.post("/apps/slow_agent/users/u/sessions", json={}).json()["id"]
        thread = threading.Thread(
            target=lambda: client.post("/run", json=run_body(sid, "tool 30")), daemon=True
        )
        thread.start()
        wait_until(lambda: observed_of(observed, sid, "tool_started"))
        announced = [v for n, v in backend.calls if n == "announce" and v.session_id == sid]
        assert announced and announced[-1].invocation_id is not None
        assert announced[-1].worker == registry.node_id
        answer = client.post(session_path(sid) + ":cancel", json={"wait": False})
        assert answer.status_code == 202
        assert {r["worker"] for r in answer.json()["runs"]} == {registry.node_id, PeerBackend.PEER}
        thread.join(5)
        wait_until(
            lambda: any(n == "withdraw" and v.session_id == sid for n, v in list(backend.calls))
        )
        # The run's record is handed to the backend as the run ends.
        [saved] = wait_until(
            lambda: [
                v for n, v in list(backend.calls) if n == "save_record" and v.session_id == sid
            ]
        )
        assert (saved.status, saved.worker) == ("cancelled", registry.node_id)

        # Remote part down: listing answers 503; a cancel with a local run still stops it.
        backend.down = True
        down = client.get(session_path(sid) + "/runs")
        assert down.status_code == 503 and "peer bus is down" in down.json()["detail"]
        assert client.post(session_path("s2") + ":cancel").status_code == 503
        thread = threading.Thread(
            target=lambda: client.post("/run", json=run_body(sid, "tool 30")), daemon=True
        )
        observed.clear()
        thread.start()
        wait_until(lambda: observed_of(observed, sid, "tool_started"))
        # Listing the session: this worker's run, and a word that others were not asked.
        listed = client.get(session_path(sid) + "/runs")
        assert listed.status_code == 200, listed.text
        assert [r["worker"] for r in listed.json()["runs"]] == [registry.node_id]
        assert "peer bus is down" in listed.json()["unreachable"]
        answer = client.post(session_path(sid) + ":cancel")
        assert answer.status_code == 200, answer.text
        assert [r["stopped_by"] for r in answer.json()["runs"]] == ["abort"]
        # ...and says the answer is this worker's only.
        assert "peer bus is down" in answer.json()["unreachable"]
        thread.join(5)
        assert client.post(session_path("s1") + ":cancel").status_code == 503
        backend.down = False
        assert client.post(session_path("s1") + ":cancel").json()["unreachable"] is None
    assert backend.names()[-1] == "disconnect"
