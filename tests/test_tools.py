"""``adk_cancel.tools``: what a tool started stops when its run is cancelled.

The subprocess agent's tool runs ``sh -c "sleep 60 & sleep 60; wait"`` through
``subprocess_shell``: after a cancel, no process of that group may be alive 200 ms after the
cancel's answer, on every route. The sync agent's tool waits on ``run_abort`` in ADK's tool
thread pool and must wake at the cancel, not after its 30 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from support import build_app, group_members, observed_of, run_body, session_path, wait_until

from adk_cancel.testing import unanswered_calls
from adk_cancel.tools import on_cancel, run_abort, subprocess_exec, subprocess_shell

pytestmark = pytest.mark.timeout(90)

AGENT = "subprocess_agent"
GONE_WITHIN_S = 0.2


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(build_app(cancel_grace_s=0.5)) as c:
        yield c


@pytest.mark.parametrize("route", ["run", "run_sse", "run_live"])
def test_a_cancelled_tools_subprocess_group_is_gone_on_every_route(
    client: TestClient, observed: list[dict[str, Any]], route: str
) -> None:
    sid = client.post(f"/apps/{AGENT}/users/u/sessions", json={}).json()["id"]

    def cancel_once_started() -> tuple[dict[str, Any], float]:
        started = wait_until(lambda: observed_of(observed, sid, "job_started"))
        pgid = started[0]["pgid"]
        # The tool reports its job as soon as the shell is started: the shell may not have
        # forked both ``sleep`` yet.
        wait_until(lambda: len(group_members(pgid)) == 3)  # sh and two sleep
        answer = client.post(session_path(sid, AGENT) + ":cancel", json={"reason": "stop"})
        answered = time.monotonic()
        assert answer.status_code == 200, answer.text
        return answer.json()["runs"][0] | {"pgid": pgid}, answered

    if route == "run_live":
        url = f"/run_live?app_name={AGENT}&user_id=u&session_id={sid}&modalities=TEXT"
        with client.websocket_connect(url) as ws:
            ws.send_text(json.dumps({"content": {"role": "user", "parts": [{"text": "tool 60"}]}}))
            run, answered = cancel_once_started()
    else:
        body = run_body(sid, "tool 60", app=AGENT, streaming=route == "run_sse")
        thread = threading.Thread(target=lambda: client.post(f"/{route}", json=body), daemon=True)
        thread.start()
        run, answered = cancel_once_started()
        thread.join(5)
    time.sleep(max(0.0, answered + GONE_WITHIN_S - time.monotonic()))
    assert group_members(run["pgid"]) == []
    assert run["stopped_by"] == ("force" if route == "run_live" else "abort")
    # The group got SIGTERM as the cancel was signalled: the tool saw its job end, or its
    # own cancellation, whichever came first; either way the session is well-formed.
    assert unanswered_calls(client.get(session_path(sid, AGENT)).json()["events"]) == []


def test_a_job_that_finishes_returns_and_leaves_nothing(
    client: TestClient, observed: list[dict[str, Any]]
) -> None:
    sid = client.post(f"/apps/{AGENT}/users/u/sessions", json={}).json()["id"]
    events = client.post("/run", json=run_body(sid, "tool 0.2", app=AGENT)).json()
    results = [
        p["functionResponse"]["response"]
        for e in events
        for p in e["content"]["parts"]
        if "functionResponse" in p
    ]
    assert results == [{"exit": 0}]
    [started] = observed_of(observed, sid, "job_started")
    assert group_members(started["pgid"]) == []


def test_a_sync_tool_waiting_on_run_abort_wakes_at_the_cancel(
    client: TestClient, observed: list[dict[str, Any]]
) -> None:
    sid = client.post("/apps/sync_agent/users/u/sessions", json={}).json()["id"]
    body = run_body(sid, "tool 30", app="sync_agent")
    thread = threading.Thread(target=lambda: client.post("/run", json=body), daemon=True)
    thread.start()
    [started] = wait_until(lambda: observed_of(observed, sid, "tool_started"))
    assert started["thread"].startswith("adk_tool_executor"), "runs in ADK's tool thread pool"
    answer = client.post(session_path(sid, "sync_agent") + ":cancel")
    answered = time.time()
    assert answer.json()["runs"][0]["stopped_by"] == "abort"
    [woke] = wait_until(lambda: observed_of(observed, sid, "tool_woke"), timeout=2)
    assert woke["aborted"] is True
    assert woke["t"] - answered < 0.1, "woke at the cancel, not after its 30 s"
    thread.join(5)


async def test_run_abort_wait_refuses_to_block_the_event_loop() -> None:
    abort = run_abort(_Context())
    with pytest.raises(RuntimeError, match="tool thread pool"):
        abort.wait(0.01)
    abort.close()


class _Context:
    """A tool context outside adk-cancel: only ADK's abort flag."""

    def __init__(self) -> None:
        self.is_aborted = False


def test_outside_adk_cancel_the_helpers_fall_back_to_adks_abort_flag() -> None:
    context = _Context()
    abort = run_abort(context)
    waiter: dict[str, Any] = {}

    def wait() -> None:
        started = time.monotonic()
        waiter["aborted"] = abort.wait(5)
        waiter["after_s"] = time.monotonic() - started

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.1)
    context.is_aborted = True
    thread.join(2)
    assert waiter["aborted"] is True and waiter["after_s"] < 0.5
    assert run_abort(_Context()).wait(0.05) is False

    calls: list[str] = []
    with on_cancel(_Context(), lambda: calls.append("ran")):
        pass
    assert calls == [], "a block that ends normally runs nothing"
    aborted = _Context()
    with on_cancel(aborted, lambda: calls.append("ran")):
        aborted.is_aborted = True
    assert calls == ["ran"]


async def test_a_block_cancelled_off_adk_cancel_stops_the_group() -> None:
    calls: list[str] = []
    seen: dict[str, int] = {}
    with anyio.move_on_after(0.3):
        with on_cancel(_Context(), lambda: calls.append("ran")):
            async with subprocess_exec("sleep", "60") as proc:
                seen["pgid"] = proc.pgid
                await proc.wait()
    assert calls == ["ran"]
    assert group_members(seen["pgid"]) == []


async def test_a_group_that_ignores_sigterm_gets_sigkill_after_the_grace() -> None:
    seen: dict[str, Any] = {}
    started = time.monotonic()
    with anyio.move_on_after(0.2):
        # Ignored signals stay ignored across exec: the shell and its sleep ignore SIGTERM.
        async with subprocess_shell("trap '' TERM; sleep 60", grace_s=0.3) as proc:
            seen["pgid"] = proc.pgid
            await proc.wait()
    elapsed = time.monotonic() - started
    assert group_members(seen["pgid"]) == []
    assert proc.returncode == -signal.SIGKILL
    assert 0.2 + 0.3 <= elapsed < 2.0, elapsed


async def test_subprocess_helpers_refuse_their_own_process_group_arguments() -> None:
    with pytest.raises(ValueError, match="group of its own"):
        async with subprocess_exec("true", process_group=0):
            pass
    async with subprocess_exec("sh", "-c", "echo $$", stdout=asyncio.subprocess.PIPE) as proc:
        out, _ = await proc.communicate()
    assert int(out) == proc.pid == proc.pgid and os.getpgid(0) != proc.pgid
