"""Cancelling each of the three routes through a real ADK Runner (TestClient, in-memory)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.adk.cli.service_registry import get_service_registry
from google.adk.errors import StaleSessionError
from google.adk.sessions import BaseSessionService, InMemorySessionService
from google.adk.sessions.sqlite_session_service import SqliteSessionService
from starlette.websockets import WebSocketDisconnect
from support import (
    TEST_AGENTS,
    HeldUserWrite,
    build_app,
    memory_services,
    run_body,
    session_path,
    wait_until,
)

import adk_cancel
from adk_cancel import WS_CLOSE_CANCELLED, CancelOrder
from adk_cancel.testing import parse_sse, unanswered_calls

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
    events = parse_sse(body)
    # Every event carries its id, the cancelled one too.
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "cancelled"
    final = events[-1].json()
    assert final["errorCode"] == "CANCELLED" and final["cancelled"]["reason"] == "stop it"
    assert final["invocationId"] == response.json()["runs"][0]["invocation_id"]
    partials = [e.json() for e in events[:-1]]
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
    last = parse_sse(result["response"].text)[-1]
    assert last.event == "cancelled" and last.json()["cancelled"]["stoppedBy"] == "force"
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
def client_on(service: BaseSessionService, **options: Any) -> Iterator[TestClient]:
    """A client of the sample app whose sessions live in ``service``: ADK builds session
    services from URIs, so it is registered under a scheme of its own."""
    scheme = type(service).__name__.strip("_").lower()
    get_service_registry().register_session_service(scheme, lambda uri, **kw: service)
    with TestClient(build_app(session_service_uri=f"{scheme}://", **options)) as client:
        yield client


class _FlakySqlite(SqliteSessionService):
    """A real SQLite session store whose seal writes (ADK's or adk-cancel's) fail the way a
    concurrent writer makes them fail: ``StaleSessionError``."""

    def __init__(self, db_path: str) -> None:
        super().__init__(db_path=db_path)
        self.seal_failures_left = 0

    async def append_event(self, session: Any, event: Any) -> Any:
        if self.seal_failures_left and event.error_code == "INVOCATION_ABORTED":
            self.seal_failures_left -= 1
            raise StaleSessionError("The session has been modified by another writer.")
        return await super().append_event(session, event)


def test_run_that_fails_after_its_cancel_still_ends_cleanly(
    tmp_path: Path, observed: list[dict[str, Any]]
) -> None:
    service = _FlakySqlite(str(tmp_path / "sessions.db"))
    with client_on(service) as client:
        sid = new_session(client)
        thread, result = start_in_thread(lambda: client.post("/run", json=run_body(sid, "tool 30")))
        wait_for_tool(observed, sid)
        service.seal_failures_left = 1
        response = client.post(session_path(sid) + ":cancel")
        assert response.status_code == 200, response.text
        (run,) = response.json()["runs"]
        # The run raised instead of ending: adk-cancel says so, and wrote the seal itself.
        assert run["stopped"] and run["stopped_by"] == "error" and run["repaired"] is True
        thread.join(5)
        ran = result["response"]
        assert ran.status_code == 200 and ran.headers["x-adk-cancel"] == "cancelled"
        assert ran.json()[-1]["errorCode"] == "CANCELLED"
        assert service.seal_failures_left == 0 and active_runs(client, sid) == []
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


def test_a_cancel_after_the_answer_is_complete_reports_finished(
    app: Any, observed: list[dict[str, Any]]
) -> None:
    """The run's answer is complete; a cancel lands before the run has left the registry
    (forced deterministically: the cancel is sent from inside the send of the answer's
    headers). It must not abort anything, and says the run finished. By the answer's last
    byte the run has left the registry: a client acting on its answer finds no run."""
    registry: adk_cancel.RunRegistry = app.state.adk_cancel
    late: dict[str, Any] = {}

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/run":
            await app(scope, receive, send)
            return

        async def spy(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                late["listed_at_last_byte"] = registry.entries_here(late["key"])
            await send(message)
            if message["type"] == "http.response.start":
                order = CancelOrder(late["key"], "too late", timeout_s=5)
                late["task"] = asyncio.ensure_future(registry.cancel_here(order))
                await asyncio.sleep(0)  # the cancel reaches the run now

        await app(scope, receive, spy)
        late["outcome"] = await late["task"]

    with TestClient(outer) as client:
        sid = new_session(client)
        late["key"] = adk_cancel.SessionKey("slow_agent", "u", sid)
        response = client.post("/run", json=run_body(sid, "quick"))
        assert response.status_code == 200 and "x-adk-cancel" not in response.headers
        assert response.json()[-1]["content"]["parts"][0]["text"] == "Here is a quick answer."
        [run] = late["outcome"]
        assert (run.stopped, run.stopped_by, run.stop_ms) == (True, "finished", None)
        assert late["listed_at_last_byte"] == []
        events = client.get(session_path(sid)).json()["events"]
        assert not [e for e in events if e.get("errorCode")], "nothing was aborted or sealed"


@pytest.mark.parametrize("route", ["/run", "/run_sse"])
def test_input_adk_rejects_is_rejected_the_same_way(client: TestClient, route: str) -> None:
    from google.adk.cli.fast_api import get_fast_api_app

    plain = TestClient(get_fast_api_app(agents_dir=str(TEST_AGENTS), **memory_services()))
    # Not a body nested too deep: adk-cancel answers that itself (422), where ADK's answer
    # depends on the interpreter (400 on 3.11, a 500 on 3.13): test_bad_input.py.
    bodies = [b"{not json", b"[]", b'{"appName": "slow_agent"}']
    for body in bodies:
        headers = {"content-type": "application/json"}
        ours = client.post(route, content=body, headers=headers)
        theirs = plain.post(route, content=body, headers=headers)
        assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), body[:20]
        assert 400 <= ours.status_code < 500


def test_ids_that_are_not_unicode_text_get_422_and_start_nothing(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry: adk_cancel.RunRegistry = app.state.adk_cancel
    announced: list[Any] = []
    monkeypatch.setattr(registry.backend, "announce", announced.append)
    with TestClient(app) as client:
        for route in ("/run", "/run_sse"):
            # json.dumps writes the lone surrogate as the escape \ud800, as a client would.
            body = json.dumps(run_body("\ud800x", "quick")).encode()
            response = client.post(
                route, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, response.text
            assert "lone surrogate" in response.json()["detail"]
    assert announced == [] and registry.keys_here() == []


def test_a_run_that_fails_before_answering_gets_its_error_as_json(app: Any) -> None:
    with TestClient(app, raise_server_exceptions=False) as client:
        sid = new_session(client, "failing_agent")
        response = client.post("/run", json=run_body(sid, "hi", app="failing_agent"))
        assert response.status_code == 500
        assert response.json() == {
            "detail": "LookupError: model 'mlx/nope' is not prepared: run adk-cancel models prepare"
        }
        # /run_sse tells it in its stream, ADK's way; both name the cause.
        streamed = client.post("/run_sse", json=run_body(sid, "hi", app="failing_agent"))
        assert "LookupError: model 'mlx/nope' is not prepared" in streamed.text
        assert active_runs(client, sid, "failing_agent") == []


def stored_events(db_path: str, sid: str, app: str = "slow_agent") -> list[Any]:
    """Read the session from the SQLite file with a fresh store: what the next worker sees."""

    async def read() -> list[Any]:
        store = SqliteSessionService(db_path=db_path)
        session = await store.get_session(app_name=app, user_id="u", session_id=sid)
        assert session is not None
        return list(session.events)

    return asyncio.run(read())


def stored_unanswered(db_path: str, sid: str) -> list[Any]:
    return unanswered_calls(stored_events(db_path, sid))


def test_run_sse_whose_seal_write_goes_stale_is_repaired(
    tmp_path: Path, observed: list[dict[str, Any]]
) -> None:
    db = str(tmp_path / "sessions.db")
    service = _FlakySqlite(db)
    with client_on(service) as client:
        sid = new_session(client)
        thread, result = start_in_thread(
            lambda: client.post("/run_sse", json=run_body(sid, "tool 30", streaming=True))
        )
        wait_for_tool(observed, sid)
        service.seal_failures_left = 1  # ADK's seal fails inside its SSE generator
        answer = client.post(session_path(sid) + ":cancel")
        assert answer.status_code == 200, answer.text
        [run] = answer.json()["runs"]
        assert (run["stopped_by"], run["repaired"]) == ("error", True)
        thread.join(5)
        body = result["response"].text
        assert '"error"' not in body.split("event: cancelled")[0].split("data: ")[-1]
        assert body.rstrip().splitlines()[-2] == "event: cancelled"
        assert '"stoppedBy": "error"' in body
    assert stored_unanswered(db, sid) == []


def test_live_repair_that_goes_stale_is_retried(
    tmp_path: Path, observed: list[dict[str, Any]]
) -> None:
    db = str(tmp_path / "sessions.db")
    service = _FlakySqlite(db)
    with client_on(service) as client:
        sid = new_session(client)
        url = f"/run_live?app_name=slow_agent&user_id=u&session_id={sid}&modalities=TEXT"
        with client.websocket_connect(url) as ws:
            ws.send_text(json.dumps({"content": {"role": "user", "parts": [{"text": "tool 30"}]}}))
            wait_for_tool(observed, sid)
            service.seal_failures_left = 2  # adk-cancel's own repair write, twice
            answer = client.post(session_path(sid) + ":cancel")
            [run] = answer.json()["runs"]
            assert (run["stopped_by"], run["repaired"]) == ("force", True)
            with pytest.raises(WebSocketDisconnect):
                while True:
                    ws.receive_text()
        assert service.seal_failures_left == 0
    assert stored_unanswered(db, sid) == []


def test_a_forced_cancel_during_a_session_write_lets_the_write_finish(tmp_path: Path) -> None:
    """The store keeps the user's message waiting past the grace period, so the cancel is
    forced while that write is in flight. The write ends anyway: the message is stored, and
    ADK's own seal (the next write of the same session) is not stale."""
    db = str(tmp_path / "sessions.db")
    service = HeldUserWrite(db)
    with client_on(service, cancel_grace_s=0.2) as client:
        sid = new_session(client)
        service.hold.set()
        thread, result = start_in_thread(
            lambda: client.post("/run", json=run_body(sid, "tool 30 please"))
        )
        assert service.held.wait(10)
        canceller, cancelled = start_in_thread(lambda: client.post(session_path(sid) + ":cancel"))
        # stop_ms counts from the cancel's arrival: hold the write 0.6 s past that.
        wait_until(lambda: active_runs(client, sid)[0]["status"] == "cancelling")
        time.sleep(0.6)  # past the grace period: the force is due, the write still held
        service.release.set()
        thread.join(10)
        canceller.join(10)
        assert result["response"].status_code == 200
        [run] = cancelled["response"].json()["runs"]
        assert run["stopped_by"] == "force" and run["stop_ms"] >= 600
        assert active_runs(client, sid) == []

    events = stored_events(db, sid)
    texts = [p.text for e in events if e.content for p in e.content.parts or [] if p.text]
    assert "tool 30 please" in texts, "the user's message was lost"
    assert [e.error_code for e in events if e.error_code] == ["INVOCATION_ABORTED"]
    assert unanswered_calls(events) == []


class _SlowToRead(InMemorySessionService):
    """A session read that takes until the test lets it end, and says whether it ended or
    was cancelled half-way (what a database driver does not take well)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hold = threading.Event()
        self.release = threading.Event()
        self.reads: list[str] = []

    async def get_session(self, **kwargs: Any) -> Any:
        if self.hold.is_set():
            try:
                await asyncio.to_thread(self.release.wait, 10)
            except asyncio.CancelledError:
                self.reads.append("cancelled")
                raise
            self.reads.append("ended")
        return await super().get_session(**kwargs)


def test_a_cancelled_caller_does_not_cut_a_session_read_in_half() -> None:
    """A force (or ADK's own clean-up) cancels a task that is reading its session: the task
    stops waiting at once, and the read itself runs to its end (a database driver cancelled
    mid-query or mid-connect drops its connection, or, asyncpg, leaves an error unread)."""
    service = _SlowToRead()
    with client_on(service) as client:
        sid = new_session(client)

        async def cancelled_read() -> float:
            service.hold.set()
            read = asyncio.ensure_future(
                service.get_session(app_name="slow_agent", user_id="u", session_id=sid)
            )
            await asyncio.sleep(0.1)
            started = time.monotonic()
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            waited = time.monotonic() - started
            service.release.set()
            for _ in range(200):  # the read ends in the background
                if service.reads:
                    break
                await asyncio.sleep(0.01)
            return waited

        waited = client.portal.call(cancelled_read)  # type: ignore[union-attr]
    assert waited < 0.5, "the cancelled caller stopped waiting at once"
    assert service.reads == ["ended"]
