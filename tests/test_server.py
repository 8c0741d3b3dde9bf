"""Against a real uvicorn server on loopback: streaming clients, and clients that just leave.

Each disconnect test runs with the ASGI HTTP spec version uvicorn advertises (2.3, where
Starlette notices idle disconnects itself) and with 2.4 (where it does not): adk-cancel must
notice either way.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets
from support import build_app, observed_of, run_body, serve, session_path, wait_until

from adk_cancel.testing import unanswered_calls

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", params=["2.3", "2.4"])
def base_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with serve(build_app(), spec_version=request.param) as url:
        yield url


def new_session(url: str) -> str:
    return str(httpx.post(f"{url}/apps/slow_agent/users/u/sessions", json={}).json()["id"])


def runs(url: str, sid: str) -> list[dict[str, Any]]:
    return runs_of(url, sid)


def runs_of(url: str, sid: str, app: str = "slow_agent") -> list[dict[str, Any]]:
    return list(httpx.get(url + session_path(sid, app) + "/runs").json()["runs"])


def live_url(base_url: str, sid: str) -> str:
    ws_url = base_url.replace("http", "ws", 1)
    return f"{ws_url}/run_live?app_name=slow_agent&user_id=u&session_id={sid}&modalities=TEXT"


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """What the server logged that an operator would call an error: ERROR records (uvicorn's
    "Exception in ASGI application" among them), tracebacks, unretrieved task exceptions."""
    caplog.set_level(logging.WARNING)

    def errors() -> list[str]:
        gc.collect()  # asyncio reports an unretrieved task exception when the task is freed
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.ERROR or r.exc_info or "never retrieved" in r.getMessage()
        ]

    return errors


def stored_events(base_url: str, sid: str) -> list[dict[str, Any]]:
    return list(httpx.get(base_url + session_path(sid)).json()["events"])


async def assert_stopped_and_usable(
    base_url: str, observed: list[dict[str, Any]], sid: str
) -> None:
    """The agent saw the cancellation, no run is left, the stored session answers every
    function call, and the session takes another turn."""
    await asyncio.to_thread(wait_until, lambda: observed_of(observed, sid, "tool_cancelled"), 2.0)
    await asyncio.to_thread(wait_until, lambda: runs(base_url, sid) == [], 2.0)
    assert unanswered_calls(stored_events(base_url, sid)) == []
    follow_up = httpx.post(base_url + "/run", json=run_body(sid, "quick"), timeout=10)
    assert follow_up.status_code == 200, follow_up.text


async def test_sse_client_receives_final_cancelled_event(
    base_url: str, observed: list[dict[str, Any]]
) -> None:
    sid = new_session(base_url)
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:

        async def read_stream() -> None:
            body = run_body(sid, "tool 30", streaming=True)
            async with client.stream("POST", "/run_sse", json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    lines.append(line)

        reader = asyncio.create_task(read_stream())
        try:
            while not observed_of(observed, sid, "tool_started"):
                await asyncio.sleep(0.01)
            answer = await client.post(session_path(sid) + ":cancel", json={"reason": "enough"})
            assert answer.status_code == 200
            await asyncio.wait_for(reader, 2)
        finally:
            reader.cancel()
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert "event: cancelled" in lines
    assert data[-1]["errorCode"] == "CANCELLED"
    assert data[-1]["cancelled"]["reason"] == "enough"
    assert any(d.get("partial") for d in data[:-1])
    assert runs(base_url, sid) == []


@pytest.mark.parametrize("route", ["run", "run_sse"])
async def test_http_client_disconnect_aborts_the_run(
    base_url: str,
    route: str,
    observed: list[dict[str, Any]],
    server_errors: Callable[[], list[str]],
) -> None:
    sid = new_session(base_url)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        body = run_body(sid, "tool 30", streaming=route == "run_sse")
        request = asyncio.create_task(client.post(f"/{route}", json=body))
        while not observed_of(observed, sid, "tool_started"):
            await asyncio.sleep(0.01)
        assert len(runs(base_url, sid)) == 1
        request.cancel()  # closes the connection mid-run
        with pytest.raises(asyncio.CancelledError):
            await request
    await assert_stopped_and_usable(base_url, observed, sid)
    # Stopped by abort (ADK sealed it), not by ADK's instant task cancel, and quietly.
    sealed = [e for e in stored_events(base_url, sid) if e.get("errorCode")]
    assert [e["errorCode"] for e in sealed] == ["INVOCATION_ABORTED"]
    assert server_errors() == []


async def test_websocket_client_disconnect_ends_live_run(
    base_url: str, observed: list[dict[str, Any]], server_errors: Callable[[], list[str]]
) -> None:
    sid = new_session(base_url)
    async with websockets.connect(live_url(base_url, sid)) as ws:
        await ws.send(json.dumps({"content": {"role": "user", "parts": [{"text": "tool 30"}]}}))
        while not observed_of(observed, sid, "tool_started"):
            await asyncio.sleep(0.01)
        assert [r["route"] for r in runs(base_url, sid)] == ["run_live"]
    await assert_stopped_and_usable(base_url, observed, sid)
    await asyncio.sleep(0.2)  # what ADK's live tasks do after the close
    assert server_errors() == []


async def test_live_cancel_over_a_real_websocket(
    base_url: str, observed: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    sid = new_session(base_url)
    async with websockets.connect(live_url(base_url, sid)) as ws:
        await ws.send(json.dumps({"content": {"role": "user", "parts": [{"text": "tool 30"}]}}))
        while not observed_of(observed, sid, "tool_started"):
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=base_url) as client:
            answer = await client.post(session_path(sid) + ":cancel")
        assert answer.json()["runs"][0]["stopped_by"] == "force"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 2)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert runs(base_url, sid) == []
    # ADK's cancelled live handler leaves its socket reader behind; adk-cancel must end it
    # before closing, or it dies unretrieved on the close (asyncio logs that at collection).
    await asyncio.sleep(0.2)
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_live_client_dropping_mid_stream_leaves_no_unretrieved_task(
    base_url: str, server_errors: Callable[[], list[str]]
) -> None:
    """ADK's live event forwarder fails its next send once the client is gone; nobody but
    adk-cancel is left to read that failure."""
    for _ in range(5):
        sid = new_session(base_url)
        async with websockets.connect(live_url(base_url, sid)) as ws:
            await ws.send(json.dumps({"content": {"role": "user", "parts": [{"text": "hi"}]}}))
            await asyncio.wait_for(ws.recv(), 5)  # the first streamed word: now drop
        await asyncio.to_thread(wait_until, lambda s=sid: runs(base_url, s) == [], 3.0)
    await asyncio.sleep(0.3)
    assert server_errors() == []


@pytest.mark.parametrize("how", ["cancel", "drop", "close"])
async def test_live_tasks_adk_leaves_behind_are_ended_and_read(
    base_url: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ADK's live handler never awaits its forwarder task; when the run's model connection
    fails as it is torn down, that failure must not be left for the garbage collector to
    report ("Task exception was never retrieved")."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    app = "faulty_live_agent"
    sid = str(httpx.post(f"{base_url}/apps/{app}/users/u/sessions", json={}).json()["id"])
    ws_url = live_url(base_url, sid).replace("app_name=slow_agent", f"app_name={app}")
    ws = await websockets.connect(ws_url)
    await ws.send(json.dumps({"content": {"role": "user", "parts": [{"text": "hi"}]}}))
    await asyncio.wait_for(ws.recv(), 5)
    if how == "cancel":
        async with httpx.AsyncClient(base_url=base_url) as client:
            answer = await client.post(session_path(sid, app) + ":cancel")
        assert answer.status_code == 200, answer.text
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 3)
    elif how == "drop":
        ws.transport.abort()
    else:
        await ws.close()
    await asyncio.to_thread(wait_until, lambda: runs_of(base_url, sid, app) == [], 3.0)
    await asyncio.sleep(0.3)
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
