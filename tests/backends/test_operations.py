"""Operations across two real server processes sharing one Redis and one SQLite session
store: the user-wide cancel and its scoping, narrow cancels' ``remaining_active``, run
records and deadlines seen from either worker, each worker's Prometheus metrics, and a
cancelled tool's subprocess group."""

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
from support import TEST_AGENTS, group_members, run_body, session_path, until

from adk_cancel.testing import RedisServer, ServerProcess, free_port

from .backend_helpers import REDIS_SERVER

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not on PATH: CI installs it"),
]


class Worker(ServerProcess):
    def __init__(self, name: str, redis_url: str, workdir: Path) -> None:
        self.name = name
        self.peer: Worker | None = None  # the other worker, set once both exist
        self.events = workdir / f"{name}-events.jsonl"
        self.events.write_text("")
        super().__init__(
            TEST_AGENTS,
            "--session_service_uri", f"sqlite:///{workdir / 'sessions.db'}",
            "--artifact_service_uri", "memory://",
            "--memory_service_uri", "memory://",
            "--cancel_backend", f"{redis_url}?announce_ttl_s=3",
            "--log_level", "warning",
            "--no_chat",
            "--metrics",
            log_path=workdir / f"{name}.log",
            env={EVENTS_ENV: str(self.events)},
        )  # fmt: skip

    def holds(self, run: dict[str, Any]) -> bool:
        return f":{self.pid}:" in str(run["worker"])

    def observed(self, event: str, session_id: str) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.events.read_text().splitlines() if line]
        return [r for r in records if r["event"] == event and r.get("session_id") == session_id]


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, Worker]]:
    workdir = tmp_path_factory.mktemp("operations")
    redis = RedisServer(free_port(), workdir).start()
    pair = (Worker("a", redis.url, workdir), Worker("b", redis.url, workdir))
    pair[0].peer, pair[1].peer = pair[1], pair[0]
    try:
        for worker in pair:
            worker.start(wait=False)
        for worker in pair:
            worker.wait_ready()
        yield pair
    finally:
        for worker in pair:
            worker.stop()
        redis.stop()


async def new_session(http: httpx.AsyncClient, worker: Worker, app: str, user: str) -> str:
    answer = await http.post(f"{worker.url}/apps/{app}/users/{user}/sessions", json={})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def listed(
    http: httpx.AsyncClient, worker: Worker, sid: str, app: str, user: str, status: str = "active"
) -> list[dict[str, Any]]:
    path = worker.url + session_path(sid, app, user) + "/runs"
    answer = await http.get(path, params={"status": status})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["runs"])


async def start(
    http: httpx.AsyncClient,
    worker: Worker,
    app: str = "slow_agent",
    user: str = "u",
    text: str = "tool 30",
    route: str = "run",
) -> tuple[str, asyncio.Task[httpx.Response]]:
    """A run on ``worker``, once both workers list it with its invocation id (the other
    sees it only once the holder's announcement has reached Redis)."""
    sid = await new_session(http, worker, app, user)
    body = run_body(sid, text, app=app, user=user, streaming=route == "run_sse")
    task = asyncio.create_task(http.post(f"{worker.url}/{route}", json=body))

    async def seen_everywhere() -> bool:
        for each in (worker, worker.peer):
            assert each is not None
            runs = await listed(http, each, sid, app, user)
            if not runs or not all(r["invocation_id"] for r in runs):
                return False
        return True

    await until(seen_everywhere)
    return sid, task


async def metric(http: httpx.AsyncClient, worker: Worker, name: str, **labels: str) -> float:
    text = (await http.get(f"{worker.url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            label_text, value = line[len(name) + 1 :].rsplit("} ", 1)
            found = dict(part.split("=", 1) for part in label_text.split(","))
            if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
    return total


async def test_user_cancel_reaches_both_workers_and_no_one_else(
    workers: tuple[Worker, Worker], http: httpx.AsyncClient
) -> None:
    a, b = workers
    cancelled_before = {
        w.name: await metric(http, w, "adk_cancel_runs_cancelled_total", app="slow_agent")
        for w in workers
    }
    s1, t1 = await start(http, a, route="run")
    s2, t2 = await start(http, b, route="run_sse")
    s3, t3 = await start(http, a, user="mallory")
    s4, t4 = await start(http, b, app="stubborn_agent")

    answer = await http.post(f"{b.url}/apps/slow_agent/users/u:cancel", json={"reason": "out"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["sessions"] == sorted([s1, s2])
    by_session = {r["session_id"]: r for r in body["runs"]}
    assert a.holds(by_session[s1]) and b.holds(by_session[s2])
    assert all(r["stopped"] and r["stopped_by"] == "abort" for r in body["runs"])
    assert body["remaining_active"] == [] and body["unreachable"] is None
    await asyncio.gather(t1, t2)
    # Another user's run (on the worker that held u's) and u's run in another app go on.
    assert len(await listed(http, b, s3, "slow_agent", "mallory")) == 1
    assert len(await listed(http, a, s4, "stubborn_agent", "u")) == 1
    assert (await http.post(f"{a.url}/apps/slow_agent/users/u:cancel")).status_code == 404

    # Each worker counted the run it held.
    for worker in workers:
        now = await metric(http, worker, "adk_cancel_runs_cancelled_total", app="slow_agent")
        assert now - cancelled_before[worker.name] == 1, worker.name

    for path in ("/apps/slow_agent/users/mallory:cancel", "/apps/stubborn_agent/users/u:cancel"):
        assert (await http.post(a.url + path)).status_code == 200
    await asyncio.gather(t3, t4)


async def test_a_narrow_user_cancel_names_the_run_it_left_on_the_other_worker(
    workers: tuple[Worker, Worker], http: httpx.AsyncClient
) -> None:
    a, b = workers
    s1, t1 = await start(http, a, user="v")
    s2, t2 = await start(http, b, user="v")
    [target] = await listed(http, a, s1, "slow_agent", "v")
    [other] = await listed(http, a, s2, "slow_agent", "v")
    answer = await http.post(
        f"{a.url}/apps/slow_agent/users/v:cancel",
        json={"invocation_id": target["invocation_id"]},
    )
    body = answer.json()
    assert [r["run_id"] for r in body["runs"]] == [target["run_id"]]
    [left] = body["remaining_active"]
    assert (left["run_id"], left["session_id"], left["invocation_id"]) == (
        other["run_id"],
        s2,
        other["invocation_id"],
    )
    assert b.holds(left)
    assert body["warning"].startswith("1 other run of this user is still active")
    assert (await http.post(f"{a.url}/apps/slow_agent/users/v:cancel")).status_code == 200
    await asyncio.gather(t1, t2)


async def test_records_and_deadlines_are_seen_from_either_worker(
    workers: tuple[Worker, Worker], http: httpx.AsyncClient
) -> None:
    a, b = workers
    sid, task = await start(http, a)
    cancel = await http.post(b.url + session_path(sid) + ":cancel", json={"reason": "from b"})
    assert cancel.status_code == 200
    await task
    body = run_body(sid, "tool 30")
    timed = await http.post(f"{a.url}/run", json=body, headers={"X-ADK-Run-Timeout": "0.3"})
    assert timed.headers["x-adk-cancel-reason"] == "deadline exceeded after 0.3 s"

    async def both_recorded() -> list[dict[str, Any]] | None:
        # Records are written to Redis just after a run leaves its worker: until then the
        # other worker may still list it as active.
        records = await listed(http, b, sid, "slow_agent", "u", "all")
        ended = [r for r in records if r["ended_at"] is not None]
        return records if len(ended) == len(records) == 2 else None

    deadline, cancelled = await until(both_recorded)
    assert (deadline["status"], deadline["cancelled_by"]) == ("timed_out", "deadline")
    assert 0 <= deadline["cancelled_at"] - deadline["started_at"] - 0.3 < 0.05
    assert (cancelled["status"], cancelled["cancel_reason"]) == ("cancelled", "from b")
    assert a.holds(cancelled) and a.holds(deadline)
    assert await listed(http, a, sid, "slow_agent", "u", "all") == [deadline, cancelled]
    timed_out = await listed(http, b, sid, "slow_agent", "u", "timed_out")
    assert [r["run_id"] for r in timed_out] == [deadline["run_id"]]


async def test_a_tools_subprocesses_stop_when_another_worker_cancels(
    workers: tuple[Worker, Worker], http: httpx.AsyncClient
) -> None:
    a, b = workers
    sid, task = await start(http, a, app="subprocess_agent", text="tool 60")
    [job] = await until(lambda: a.observed("job_started", sid))
    # The job is reported once its shell starts: wait for both ``sleep`` to be forked too.
    await until(lambda: len(group_members(job["pgid"])) == 3, what="sh and two sleep running")
    answer = await http.post(b.url + session_path(sid, "subprocess_agent") + ":cancel")
    answered = time.monotonic()
    assert answer.status_code == 200 and answer.json()["runs"][0]["stopped_by"] == "abort"
    await asyncio.sleep(max(0.0, answered + 0.2 - time.monotonic()))
    assert group_members(job["pgid"]) == []
    await task
