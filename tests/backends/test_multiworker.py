"""Real server processes sharing one Redis and one SQLite session store.

Each worker is a separate uvicorn process (``_worker.py``) built by
``adk_cancel.get_fast_api_app(..., cancel_backend="redis://...")`` and serving the slow
sample agent, which writes what it observes (its tool started, was cancelled) to a file per
worker. A run started through one worker is listed and cancelled through another. Workers a
and b serve most tests; c exists to be killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from observations import EVENTS_ENV
from support import TEST_AGENTS, run_body, session_path, until

from adk_cancel.testing import RedisServer, ServerProcess, free_port

from .backend_helpers import REDIS_SERVER

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not on PATH: CI installs it"),
]


class Worker(ServerProcess):
    """One ``adk-cancel api_server`` process serving the test agents on a loopback port, with
    its sessions in a shared SQLite file; its agents record what they observe to a file."""

    def __init__(self, name: str, backend_url: str, session_db: Path, workdir: Path) -> None:
        self.name = name
        self.events = workdir / f"{name}-events.jsonl"
        self.events.write_text("")
        super().__init__(
            TEST_AGENTS,
            "--session_service_uri", f"sqlite:///{session_db}",
            "--artifact_service_uri", "memory://",
            "--memory_service_uri", "memory://",
            "--cancel_backend", backend_url,
            "--log_level", "warning",
            "--no_chat",
            log_path=workdir / f"{name}.log",
            env={EVENTS_ENV: str(self.events)},
        )  # fmt: skip

    def holds(self, run: dict[str, Any]) -> bool:
        """Whether a listed or cancelled run belongs to this process (node ids hold the pid)."""
        return f":{self.pid}:" in str(run["worker"])

    def observed(self, session_id: str | None = None) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.events.read_text().splitlines() if line]
        return [r for r in records if session_id is None or r.get("session_id") == session_id]

    def saw(self, event: str, session_id: str) -> bool:
        return any(r["event"] == event for r in self.observed(session_id))


def start_workers(names: list[str], backend_url: str, workdir: Path) -> list[Worker]:
    """Start the workers side by side (an import of ADK takes seconds) and wait for all."""
    session_db = workdir / "sessions.db"
    workers = [Worker(name, backend_url, session_db, workdir) for name in names]
    try:
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    return workers


TTL_S = 2.0
"""Short, so that a killed worker's runs expire within the test."""


class Servers:
    def __init__(self, redis: RedisServer, workers: list[Worker]) -> None:
        self.redis = redis
        # c is killed by one test; a and b serve the others.
        self.a, self.b, self.c = workers
        self.workers = workers

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.stop()


def start_servers(workdir: Path) -> Servers:
    redis = RedisServer(free_port(), workdir)
    redis.start()
    try:
        workers = start_workers(["a", "b", "c"], f"{redis.url}?announce_ttl_s={TTL_S}", workdir)
    except BaseException:
        redis.stop()
        raise
    return Servers(redis, workers)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """One Redis and three workers for the module: starting ADK processes takes seconds."""
    result = start_servers(tmp_path_factory.mktemp("servers"))
    yield result
    result.close()


async def new_session(http: httpx.AsyncClient, worker: Worker) -> str:
    answer = await http.post(f"{worker.url}/apps/slow_agent/users/u/sessions", json={})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def start_run(
    http: httpx.AsyncClient, worker: Worker, sid: str, route: str = "run"
) -> asyncio.Task[httpx.Response]:
    """Start a run whose tool waits 30 s; returns once the agent is inside the tool."""
    body = run_body(sid, "tool 30", streaming=route == "run_sse")
    task = asyncio.create_task(http.post(f"{worker.url}/{route}", json=body))
    await until(lambda: worker.saw("tool_started", sid) or task.done(), what="tool started")
    assert not task.done(), task.result().text
    return task


async def runs_at(http: httpx.AsyncClient, worker: Worker, sid: str) -> list[dict[str, Any]]:
    answer = await http.get(worker.url + session_path(sid) + "/runs")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["runs"])


async def cancel_at(
    http: httpx.AsyncClient, worker: Worker, sid: str, **body: Any
) -> httpx.Response:
    return await http.post(worker.url + session_path(sid) + ":cancel", json=body)


async def assert_sealed_and_usable(http: httpx.AsyncClient, worker: Worker, sid: str) -> None:
    """The aborted call got its error response, so the model accepts the next turn."""
    session = (await http.get(worker.url + session_path(sid))).json()
    responses = [
        part["functionResponse"]
        for event in session["events"]
        for part in (event.get("content") or {}).get("parts") or []
        if part.get("functionResponse")
    ]
    assert responses and "aborted" in str(responses[-1]["response"]).lower(), responses
    follow_up = await http.post(f"{worker.url}/run", json=run_body(sid, "quick"))
    assert follow_up.status_code == 200, follow_up.text
    texts = [
        part.get("text")
        for event in follow_up.json()
        for part in (event.get("content") or {}).get("parts") or []
    ]
    assert "Here is a quick answer." in texts


@pytest.mark.parametrize("route", ["run", "run_sse"])
async def test_run_on_a_is_cancelled_through_b(
    servers: Servers, http: httpx.AsyncClient, route: str
) -> None:
    a, b = servers.a, servers.b
    sid = await new_session(http, a)
    request = await start_run(http, a, sid, route)

    [listed] = await runs_at(http, b, sid)
    assert a.holds(listed) and listed["route"] == route

    answer = await cancel_at(http, b, sid, reason="from b")
    assert answer.status_code == 200, answer.text
    [run] = answer.json()["runs"]
    assert run["run_id"] == listed["run_id"] and a.holds(run)
    assert (run["stopped"], run["stopped_by"]) == (True, "abort")
    assert answer.json()["reason"] == "from b"

    finished = await asyncio.wait_for(request, 10)
    assert finished.status_code == 200
    assert a.saw("tool_cancelled", sid)
    assert not b.observed(sid)  # B never ran anything of this session
    for worker in (a, b):
        await until(lambda w=worker: _empty(http, w, sid), what=f"{worker.name} empty")
    await assert_sealed_and_usable(http, b, sid)


async def test_wait_false_through_the_other_worker(
    servers: Servers, http: httpx.AsyncClient
) -> None:
    a, b = servers.a, servers.b
    sid = await new_session(http, b)
    request = await start_run(http, b, sid)
    answer = await cancel_at(http, a, sid, wait=False)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "cancelling"
    [run] = answer.json()["runs"]
    assert b.holds(run) and run["stopped"] is False
    await asyncio.wait_for(request, 10)
    assert b.saw("tool_cancelled", sid)
    await until(lambda: _empty(http, a, sid), what="listing empty")


async def test_listing_across_workers(servers: Servers, http: httpx.AsyncClient) -> None:
    a, b = servers.a, servers.b
    on_a, on_b = await new_session(http, a), await new_session(http, a)
    requests = [await start_run(http, a, on_a), await start_run(http, b, on_b, "run_sse")]

    for worker in (a, b):
        [run_a] = await runs_at(http, worker, on_a)
        [run_b] = await runs_at(http, worker, on_b)
        assert a.holds(run_a) and b.holds(run_b)
        assert run_a["invocation_id"] and run_b["invocation_id"]
        assert run_a["elapsed_ms"] > 0
    assert await runs_at(http, b, "no-such-session") == []

    # Cancel each through the worker that holds it (the local path, with Redis healthy).
    for sid, worker in ((on_a, a), (on_b, b)):
        answer = await cancel_at(http, worker, sid)
        assert answer.status_code == 200
        assert [r["stopped_by"] for r in answer.json()["runs"]] == ["abort"]
    await asyncio.gather(*requests)
    for worker in (a, b):
        for sid in (on_a, on_b):
            await until(lambda w=worker, s=sid: _empty(http, w, s), what="listing empty")


async def test_requester_holding_runs_too(servers: Servers, http: httpx.AsyncClient) -> None:
    """One cancel through B stops B's own run (locally) and A's (through Redis)."""
    a, b = servers.a, servers.b
    sid = await new_session(http, a)
    on_a = await start_run(http, a, sid)
    on_b = await start_run(http, b, sid)
    assert sorted(a.holds(r) for r in await runs_at(http, b, sid)) == [False, True]

    answer = await cancel_at(http, b, sid)
    assert answer.status_code == 200, answer.text
    runs = answer.json()["runs"]
    assert sorted(a.holds(r) for r in runs) == [False, True]
    assert all(r["stopped"] for r in runs)
    [local] = [r for r in runs if b.holds(r)]
    assert local["stopped_by"] == "abort"
    # Not asserted: how A's run ends. Both runs appended to one SQLite session, and ADK's
    # SqliteSessionService rejects A's sealing event as stale (its /run answers 500).
    await asyncio.gather(on_a, on_b)
    assert a.saw("tool_cancelled", sid) and b.saw("tool_cancelled", sid)
    for worker in (a, b):
        await until(lambda w=worker: _empty(http, w, sid), what=f"{worker.name} empty")


async def test_no_run_anywhere_is_404(servers: Servers, http: httpx.AsyncClient) -> None:
    sid = await new_session(http, servers.a)
    for worker in servers.workers:
        answer = await cancel_at(http, worker, sid)
        assert answer.status_code == 404, answer.text
        assert answer.json()["detail"].startswith("No active run for session")
        assert await runs_at(http, worker, sid) == []


async def test_a_killed_worker_leaves_the_listing_after_the_ttl(
    servers: Servers, http: httpx.AsyncClient
) -> None:
    c, b = servers.c, servers.b
    sid = await new_session(http, c)
    request = await start_run(http, c, sid)
    [listed] = await runs_at(http, b, sid)
    assert c.holds(listed)

    c.kill()  # SIGKILL: no shutdown, nothing withdrawn
    killed_at = time.monotonic()
    with pytest.raises(httpx.HTTPError):
        await request
    await until(lambda: _empty(http, b, sid), timeout=TTL_S * 3, what="killed run expired")
    assert time.monotonic() - killed_at < TTL_S + 1.0
    answer = await cancel_at(http, b, sid)
    assert answer.status_code == 404, answer.text


async def test_redis_outage(servers: Servers, http: httpx.AsyncClient) -> None:
    a, b = servers.a, servers.b
    remote_sid = await new_session(http, a)
    remote_request = await start_run(http, a, remote_sid)
    assert len(await runs_at(http, b, remote_sid)) == 1

    servers.redis.stop()
    try:
        # Cross-worker: 503 saying what is down, quickly.
        started = time.monotonic()
        answer = await cancel_at(http, b, remote_sid)
        assert answer.status_code == 503, answer.text
        assert f"Redis at {servers.redis.url} is unreachable" in answer.json()["detail"]
        listing = await http.get(b.url + session_path(remote_sid) + "/runs")
        assert listing.status_code == 503
        assert time.monotonic() - started < 2.0
        assert not a.saw("tool_cancelled", remote_sid)

        # Runs still start, and a worker still cancels its own.
        local_sid = await new_session(http, b)
        local_request = await start_run(http, b, local_sid)
        answer = await cancel_at(http, b, local_sid)
        assert answer.status_code == 200, answer.text
        assert [r["stopped_by"] for r in answer.json()["runs"]] == ["abort"]
        assert "is unreachable" in answer.json()["unreachable"]
        await asyncio.wait_for(local_request, 10)
        assert b.saw("tool_cancelled", local_sid)
    finally:
        # Redis comes back empty: the workers re-announce by themselves.
        servers.redis.start()
    await until(lambda: _listed_ok(http, b, remote_sid), timeout=10, what="re-announced")
    answer = await cancel_at(http, b, remote_sid)
    assert answer.status_code == 200, answer.text
    [run] = answer.json()["runs"]
    assert a.holds(run) and run["stopped_by"] == "abort"
    await asyncio.wait_for(remote_request, 10)
    assert a.saw("tool_cancelled", remote_sid)
    await assert_sealed_and_usable(http, b, remote_sid)
    # Each worker logged the outage once, and its end.
    for worker in (a, b):
        log = worker.log()
        assert log.count("is unreachable") == 1, log
        assert log.count("is reachable again") == 1, log


async def _empty(http: httpx.AsyncClient, worker: Worker, sid: str) -> bool:
    return await runs_at(http, worker, sid) == []


async def _listed_ok(http: httpx.AsyncClient, worker: Worker, sid: str) -> bool:
    answer = await http.get(worker.url + session_path(sid) + "/runs")
    return answer.status_code == 200 and len(answer.json()["runs"]) == 1
