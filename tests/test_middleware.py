"""Cancelling each of the three routes through a real ADK Runner (TestClient, in-memory)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.adk.cli.service_registry import get_service_registry
from google.adk.sessions import InMemorySessionService
from starlette.websockets import WebSocketDisconnect
from support import build_app, run_body, session_path, wait_until

from adk_cancel import WS_CLOSE_CANCELLED

pytestmark = pytest.mark.timeout(60)


def new_session(client: TestClient, app: str = "slow_agent") -> str:
    response = client.post(f"/apps/{app}/users/u/sessions", json={})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def active_runs(client: TestClient, sid: str, app: str = "slow_agent") -> list[dict[str, Any]]:
    response = client.get(session_path(sid, app) + "/runs")
    assert response.status_code == 200, response.text
    return list(response.json()["runs"])


def start_in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def target() -> None:
        result["response"] = fn()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def wait_for_tool(observed: list[dict[str, Any]], sid: str) -> None:
    wait_until(
        lambda: any(o["event"] == "tool_started" and o["session_id"] == sid for o in observed)
    )


def assert_follow_up_works(client: TestClient, sid: str, app: str = "slow_agent") -> None:
    # The sample model raises on any unanswered function call, as Gemini does.
    response = client.post("/run", json=run_body(sid, "quick", app=app))
    assert response.status_code == 200, response.text
    assert response.json()[-1]["content"]["parts"][0]["text"] == "Here is a quick answer."


def test_run_cancel_aborts_and_session_stays_usable(
    client: TestClient, observed: list[dict[str, Any]]
) -> None:
    sid = new_session(client)
    thread, result = start_in_thread(lambda: client.post("/run", json=run_body(sid, "tool 30")))
    wait_for_tool(observed, sid)
    assert [r["route"] for r in active_runs(client, sid)] == ["run"]

    sent = time.monotonic()
    response = client.post(session_path(sid) + ":cancel", json={"reason": "user pressed stop"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "cancelled" and answer["session_id"] == sid
    (run,) = answer["runs"]
    assert run["route"] == "run" and run["stopped"] and run["stopped_by"] == "abort"
    assert run["invocation_id"].startswith("e-") and run["stop_ms"] < 1000
    cancelled = [o for o in observed if o["event"] == "tool_cancelled"]
    assert cancelled and cancelled[0]["t"] - (time.time() - (time.monotonic() - sent)) < 1.0

    thread.join(5)
    ran = result["response"]
    assert ran.status_code == 200 and ran.headers["x-adk-cancel"] == "cancelled"
    events = ran.json()
    assert events[-1]["errorCode"] == "INVOCATION_ABORTED"
    assert "functionResponse" in events[-1]["content"]["parts"][0]

    assert active_runs(client, sid) == []
    again = client.post(session_path(sid) + ":cancel")
    assert again.status_code == 404
    assert again.json()["detail"].startswith("No active run for session")
    assert_follow_up_works(client, sid)


def test_run_sse_cancel_ends_stream_with_cancelled_event(
    client: TestClient, observed: list[dict[str, Any]]
) -> None:
    sid = new_session(client)
    thread, result = start_in_thread(
        lambda: client.post("/run_sse", json=run_body(sid, "tool 30", streaming=True))
    )
    wait_for_tool(observed, sid)
    response = client.post(session_path(sid) + ":cancel", json={"reason": "stop it"})
    assert response.status_code == 200
    assert response.json()["runs"][0]["stopped_by"] == "abort"
    thread.join(5)
    body = result["response"].text
    chunks = [c for c in body.split("\n\n") if c.strip()]
    assert chunks[-1].startswith("event: cancelled\ndata: ")
    final = json.loads(chunks[-1].split("data: ", 1)[1])
    assert final["errorCode"] == "CANCELLED" and final["cancelled"]["reason"] == "stop it"
    assert final["invocationId"] == response.json()["runs"][0]["invocation_id"]
    partials = [json.loads(c[len("data: ") :]) for c in chunks[:-1]]
    assert any(p.get("partial") for p in partials), "the stream carried partial text first"
    assert any(o["event"] == "tool_cancelled" for o in observed)
    assert active_runs(client, sid) == []
    assert_follow_up_works(client, sid)


def test_run_live_cancel_closes_websocket_and_repairs(
    client: TestClient, observed: list[dict[str, Any]]
) -> None:
    sid = new_session(client)
    url = f"/run_live?app_name=slow_agent&user_id=u&session_id={sid}&modalities=TEXT"
    with client.websocket_connect(url) as ws:
        ws.send_text(json.dumps({"content": {"role": "user", "parts": [{"text": "tool 30"}]}}))
        wait_for_tool(observed, sid)
        response = client.post(session_path(sid) + ":cancel", json={"reason": "bye"})
        assert response.status_code == 200
        (run,) = response.json()["runs"]
        assert run["route"] == "run_live" and run["stopped_by"] == "force" and run["repaired"]
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                ws.receive_text()
    assert closed.value.code == WS_CLOSE_CANCELLED
    assert closed.value.reason == "cancelled: bye"
    assert any(o["event"] == "tool_cancelled" for o in observed)
    assert active_runs(client, sid) == []
    assert_follow_up_works(client, sid)


def test_force_cancel_after_grace_repairs_session(
    stubborn_client: TestClient, observed: list[dict[str, Any]]
) -> None:
    client = stubborn_client
    sid = new_session(client, "stubborn_agent")
    thread, result = start_in_thread(
        lambda: client.post("/run", json=run_body(sid, "tool 30", app="stubborn_agent"))
    )
    wait_for_tool(observed, sid)
    response = client.post(session_path(sid, "stubborn_agent") + ":cancel")
    assert response.status_code == 200
    (run,) = response.json()["runs"]
    # ADK's own seal runs in its finally (the run was aborted first), so adk-cancel finds
    # nothing left to answer; the live test covers a repair adk-cancel writes itself.
    assert run["stopped_by"] == "force" and run["repaired"] is False
    assert 300 <= run["stop_ms"] < 1500  # the grace period (0.3 s) first, then force
    kinds = [o["event"] for o in observed]
    assert "tool_ignored_cancel" in kinds and "tool_cancelled" in kinds
    thread.join(5)
    forced = result["response"]
    assert forced.status_code == 200 and forced.headers["x-adk-cancel"] == "cancelled"
    # ADK returns the events it has when its task swallows the cancellation; otherwise
    # adk-cancel answers with its own cancelled event. Either way: a well-formed list.
    assert forced.json()[-1]["errorCode"] in ("INVOCATION_ABORTED", "CANCELLED")
    events = client.get(session_path(sid, "stubborn_agent")).json()["events"]
    repaired = [e for e in events if e.get("errorCode") == "INVOCATION_ABORTED"]
    assert repaired and "functionResponse" in repaired[-1]["content"]["parts"][0]
    assert active_runs(client, sid, "stubborn_agent") == []
    assert_follow_up_works(client, sid, "stubborn_agent")


def test_force_cancel_on_run_sse_ends_stream(
    stubborn_client: TestClient, observed: list[dict[str, Any]]
) -> None:
    client = stubborn_client
    sid = new_session(client, "stubborn_agent")
    thread, result = start_in_thread(
        lambda: client.post("/run_sse", json=run_body(sid, "tool 30", app="stubborn_agent"))
    )
    wait_for_tool(observed, sid)
    response = client.post(session_path(sid, "stubborn_agent") + ":cancel")
    assert response.json()["runs"][0]["stopped_by"] == "force"
    thread.join(5)
    assert not thread.is_alive()
    last = [c for c in result["response"].text.split("\n\n") if c.strip()][-1]
    assert last.startswith("event: cancelled") and '"stoppedBy": "force"' in last
    assert_follow_up_works(client, sid, "stubborn_agent")


def test_concurrent_runs_of_one_session_coexist(
    client: TestClient, observed: list[dict[str, Any]]
) -> None:
    sid = new_session(client)
    threads = [
        start_in_thread(lambda: client.post("/run", json=run_body(sid, "tool 30")))[0]
        for _ in range(2)
    ]
    wait_until(
        lambda: (
            len(active_runs(client, sid)) == 2
            and all(r["invocation_id"] for r in active_runs(client, sid))
        )
    )
    first, second = active_runs(client, sid)
    assert first["run_id"] != second["run_id"]

    only = client.post(
        session_path(sid) + ":cancel", json={"invocation_id": first["invocation_id"]}
    )
    assert [r["run_id"] for r in only.json()["runs"]] == [first["run_id"]]
    assert [r["run_id"] for r in active_runs(client, sid)] == [second["run_id"]]

    rest = client.post(session_path(sid) + ":cancel")
    assert [r["run_id"] for r in rest.json()["runs"]] == [second["run_id"]]
    for thread in threads:
        thread.join(5)
    assert active_runs(client, sid) == []


def test_wait_false_answers_202_before_the_run_ends(
    stubborn_client: TestClient, observed: list[dict[str, Any]]
) -> None:
    client = stubborn_client
    sid = new_session(client, "stubborn_agent")
    thread, _ = start_in_thread(
        lambda: client.post("/run", json=run_body(sid, "tool 30", app="stubborn_agent"))
    )
    wait_for_tool(observed, sid)
    response = client.post(session_path(sid, "stubborn_agent") + ":cancel", json={"wait": False})
    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == "cancelling" and answer["runs"][0]["stopped"] is False
    # The force still happens after the grace period, owned by the run, not the request.
    thread.join(5)
    assert not thread.is_alive()
    assert active_runs(client, sid, "stubborn_agent") == []


@contextmanager
def client_on(service: InMemorySessionService) -> Iterator[TestClient]:
    """A client of the sample app whose sessions live in ``service``: ADK builds session
    services from URIs, so it is registered under a scheme of its own."""
    scheme = type(service).__name__.strip("_").lower()
    get_service_registry().register_session_service(scheme, lambda uri, **kw: service)
    with TestClient(build_app(session_service_uri=f"{scheme}://")) as client:
        yield client


class _SealFailsOnce(InMemorySessionService):
    """Fails ADK's seal write once, as a stale write on a shared store does (two workers
    writing one SQLite session)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.failures_left = 0

    async def append_event(self, session: Any, event: Any) -> Any:
        if self.failures_left and event.error_code == "INVOCATION_ABORTED":
            self.failures_left -= 1
            raise RuntimeError("stale session: the session was modified by another writer")
        return await super().append_event(session, event)


def test_run_that_fails_after_its_cancel_still_ends_cleanly(
    observed: list[dict[str, Any]],
) -> None:
    service = _SealFailsOnce()
    with client_on(service) as client:
        sid = new_session(client)
        thread, result = start_in_thread(lambda: client.post("/run", json=run_body(sid, "tool 30")))
        wait_for_tool(observed, sid)
        service.failures_left = 1
        response = client.post(session_path(sid) + ":cancel")
        assert response.status_code == 200, response.text
        (run,) = response.json()["runs"]
        # The run raised instead of ending: adk-cancel says so, and wrote the seal itself.
        assert run["stopped"] and run["stopped_by"] == "error" and run["repaired"] is True
        thread.join(5)
        ran = result["response"]
        assert ran.status_code == 200 and ran.headers["x-adk-cancel"] == "cancelled"
        assert ran.json()[-1]["errorCode"] == "CANCELLED"
        assert service.failures_left == 0 and active_runs(client, sid) == []
        assert_follow_up_works(client, sid)


class _SlowToLoad(InMemorySessionService):
    """Holds every session load until the test lets it go: ADK has not reached its
    before_run_callback yet, so the run has no invocation context to abort."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hold = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()

    async def get_session(self, **kwargs: Any) -> Any:
        if self.hold.is_set():
            self.held.set()
            await asyncio.to_thread(self.release.wait, 10)
        return await super().get_session(**kwargs)


def test_cancel_before_the_agent_starts_means_it_never_starts(
    observed: list[dict[str, Any]],
) -> None:
    service = _SlowToLoad()
    with client_on(service) as client:
        sid = new_session(client)
        service.hold.set()
        thread, result = start_in_thread(lambda: client.post("/run", json=run_body(sid, "tool 30")))
        assert service.held.wait(10)
        service.hold.clear()
        [listed] = active_runs(client, sid)
        assert listed["invocation_id"] is None  # ADK has not started the invocation
        answer = client.post(session_path(sid) + ":cancel", json={"wait": False})
        assert answer.status_code == 202, answer.text
        service.release.set()
        thread.join(10)
        ran = result["response"]
        assert ran.status_code == 200 and ran.headers["x-adk-cancel"] == "cancelled"
        # The cancel was recorded and applied the moment ADK attached the run: the agent
        # never called its model (no content, only ADK's abort seal), let alone its tool.
        [sealed] = ran.json()
        assert sealed["errorCode"] == "INVOCATION_ABORTED" and "content" not in sealed
        assert not [o for o in observed if o.get("session_id") == sid]
        assert active_runs(client, sid) == []
        assert_follow_up_works(client, sid)
