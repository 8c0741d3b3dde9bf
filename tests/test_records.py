"""Run records: ``GET .../runs?status=`` lists a session's recent runs with how each ended,
written on every ending path (finished, failed, refused, cancelled by a request, forced, a
disconnect, a deadline, a shutdown), bounded per session and in time."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from fastapi.testclient import TestClient
from support import build_app, observed_of, run_body, serve, session_path, wait_until

from adk_cancel import SessionKey

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def shared_client() -> Iterator[TestClient]:
    # A /run whose agent raises answers 500: the client reads it rather than re-raising.
    with TestClient(build_app(cancel_grace_s=0.3), raise_server_exceptions=False) as client:
        yield client


def new_session(client: TestClient | str, app: str = "slow_agent") -> str:
    if isinstance(client, str):
        return str(httpx.post(f"{client}/apps/{app}/users/u/sessions", json={}).json()["id"])
    return str(client.post(f"/apps/{app}/users/u/sessions", json={}).json()["id"])


def listed(
    client: TestClient | str, sid: str, status: str | None = "all", app: str = "slow_agent"
) -> list[dict[str, Any]]:
    path = session_path(sid, app) + "/runs"
    params = {"status": status} if status is not None else {}
    if isinstance(client, str):
        answer = httpx.get(client + path, params=params)
    else:
        answer = client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["runs"])


def start(client: TestClient, route: str, sid: str, text: str, app: str = "slow_agent") -> Any:
    body = run_body(sid, text, app=app, streaming=route == "run_sse")
    thread = threading.Thread(target=lambda: client.post(f"/{route}", json=body), daemon=True)
    thread.start()
    wait_until(lambda: listed(client, sid, None, app))
    return thread


def test_a_finished_run(shared_client: TestClient) -> None:
    sid = new_session(shared_client)
    before = time.time()
    assert shared_client.post("/run", json=run_body(sid, "quick")).status_code == 200
    [record] = listed(shared_client, sid)
    assert record["status"] == "finished" and record["route"] == "run"
    assert record["invocation_id"].startswith("e-")
    assert before <= record["started_at"] <= record["ended_at"] <= time.time()
    assert record["elapsed_ms"] == pytest.approx(
        (record["ended_at"] - record["started_at"]) * 1000, abs=1
    )
    for field in ("cancel_reason", "cancelled_by", "stopped_by", "stop_ms", "error"):
        assert record[field] is None, field
    # The default listing is the active runs only, as before.
    assert listed(shared_client, sid, None) == []


@pytest.mark.parametrize("route", ["run", "run_sse"])
def test_runs_cancelled_by_a_request_abort_or_force(
    shared_client: TestClient, route: str, observed: list[dict[str, Any]]
) -> None:
    for app, stopped_by in (("slow_agent", "abort"), ("stubborn_agent", "force")):
        sid = new_session(shared_client, app)
        thread = start(shared_client, route, sid, "tool 30", app)
        # Listed is not yet in the tool: a cancel before the stubborn tool starts is obeyed
        # by the agent's next abort check, and the run is stopped by abort, not force.
        wait_until(functools.partial(observed_of, observed, sid, "tool_started"))
        answer = shared_client.post(session_path(sid, app) + ":cancel", json={"reason": "stop!"})
        [outcome] = answer.json()["runs"]
        thread.join(5)
        [record] = listed(shared_client, sid, "cancelled", app)
        assert record["status"] == "cancelled" and record["cancelled_by"] == "request"
        assert record["cancel_reason"] == "stop!" and record["stopped_by"] == stopped_by
        assert record["stop_ms"] == outcome["stop_ms"] and record["run_id"] == outcome["run_id"]
        assert record["started_at"] <= record["cancelled_at"] <= record["ended_at"]


def test_a_live_run_cancelled_by_a_request(shared_client: TestClient) -> None:
    sid = new_session(shared_client)
    url = f"/run_live?app_name=slow_agent&user_id=u&session_id={sid}&modalities=TEXT"
    with shared_client.websocket_connect(url) as ws:
        ws.send_text(json.dumps({"content": {"role": "user", "parts": [{"text": "tool 30"}]}}))
        wait_until(lambda: "functionCall" in shared_client.get(session_path(sid)).text)
        assert shared_client.post(session_path(sid) + ":cancel").status_code == 200
    [record] = listed(shared_client, sid)
    assert (record["route"], record["status"], record["stopped_by"]) == (
        "run_live",
        "cancelled",
        "force",
    )
    assert record["repaired"] is True


@pytest.mark.parametrize("route", ["run", "run_sse"])
def test_failed_runs_say_why(shared_client: TestClient, route: str) -> None:
    sid = new_session(shared_client, "failing_agent")
    body = run_body(sid, "hi", app="failing_agent", streaming=route == "run_sse")
    shared_client.post(f"/{route}", json=body)
    [record] = listed(shared_client, sid, "failed", "failing_agent")
    assert record["status"] == "failed"
    assert record["error"] == (
        "LookupError: model 'mlx/nope' is not prepared: run adk-cancel models prepare"
    )
    assert record["cancelled_by"] is None


def test_a_run_adk_refuses_is_recorded_as_failed(shared_client: TestClient) -> None:
    answer = shared_client.post("/run", json=run_body("no-such-session", "quick"))
    assert answer.status_code == 404
    [record] = listed(shared_client, "no-such-session", "failed")
    assert record["error"] == "HTTP 404" and record["invocation_id"] is None


def test_a_shutdown_cancel_is_recorded() -> None:
    app = build_app()
    with TestClient(app) as client:
        sid = new_session(client)
        start(client, "run", sid, "tool 30")
    # The app's lifespan ended with the run going: it was cancelled, reason "server shutting
    # down", and recorded on the way out.
    [record] = app.state.adk_cancel.records.here(SessionKey("slow_agent", "u", sid))
    assert (record.status, record.cancelled_by, record.cancel_reason) == (
        "cancelled",
        "shutdown",
        "server shutting down",
    )


async def test_a_disconnect_is_recorded_on_each_route() -> None:
    with serve(build_app()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for route in ("run", "run_sse"):
                sid = new_session(url)
                body = run_body(sid, "tool 30", streaming=route == "run_sse")
                request = asyncio.create_task(client.post(f"/{route}", json=body))
                while not await asyncio.to_thread(listed, url, sid, None):
                    await asyncio.sleep(0.01)
                request.cancel()  # the client leaves mid-run
                with pytest.raises(asyncio.CancelledError):
                    await request
                # "all" lists the run while it is still being cancelled: wait for its record.
                records = await asyncio.to_thread(
                    wait_until,
                    lambda: listed(url, sid, "cancelled"),  # noqa: B023
                )
                assert await asyncio.to_thread(listed, url, sid, "all") == records
                assert [(r["status"], r["cancelled_by"], r["route"]) for r in records] == [
                    ("cancelled", "disconnect", route)
                ]
        sid = new_session(url)
        ws_url = url.replace("http", "ws", 1)
        live = f"{ws_url}/run_live?app_name=slow_agent&user_id=u&session_id={sid}&modalities=TEXT"
        async with websockets.connect(live) as ws:
            await ws.send(json.dumps({"content": {"role": "user", "parts": [{"text": "tool 30"}]}}))
            while not await asyncio.to_thread(listed, url, sid, None):
                await asyncio.sleep(0.01)
        records = await asyncio.to_thread(wait_until, lambda: listed(url, sid, "cancelled"))
        assert [(r["status"], r["cancelled_by"]) for r in records] == [("cancelled", "disconnect")]
        assert await asyncio.to_thread(listed, url, sid, "all") == records


def test_records_are_bounded_per_session_and_in_time() -> None:
    with TestClient(build_app(run_records_per_session=3, run_records_ttl_s=1.0)) as client:
        sid, other = new_session(client), new_session(client)
        runs = [client.post("/run", json=run_body(sid, "quick")).json() for _ in range(5)]
        client.post("/run", json=run_body(other, "quick"))
        records = listed(client, sid)
        assert len(records) == 3
        newest = [events[-1]["invocationId"] for events in runs[-3:]][::-1]
        assert [r["invocation_id"] for r in records] == newest, "newest first"
        assert len(listed(client, other)) == 1
        wait_until(lambda: listed(client, sid) == [], timeout=3)
    with TestClient(build_app(run_records_per_session=0)) as client:
        sid = new_session(client)
        client.post("/run", json=run_body(sid, "quick"))
        assert listed(client, sid) == []


def test_status_filter(shared_client: TestClient) -> None:
    sid = new_session(shared_client)
    shared_client.post("/run", json=run_body(sid, "quick"))
    thread = start(shared_client, "run", sid, "tool 30")
    shared_client.post(session_path(sid) + ":cancel", json={"wait": False})
    thread.join(5)
    thread = start(shared_client, "run", sid, "tool 30")

    def statuses(status: str | None) -> list[str]:
        return [r["status"] for r in listed(shared_client, sid, status)]

    assert statuses(None) == ["running"] == statuses("active") == statuses("running")
    assert statuses("all") == ["running", "cancelled", "finished"]
    assert statuses("finished,cancelled") == ["cancelled", "finished"]
    assert statuses("timed_out") == []
    for bad in ("bogus", "all,nope", "x" * 300):
        answer = shared_client.get(session_path(sid) + "/runs", params={"status": bad})
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["detail"]
        assert error["loc"] == ["query", "status"]
    shared_client.post(session_path(sid) + ":cancel")
    thread.join(5)


async def test_a_runs_record_is_final_before_its_clients_last_byte() -> None:
    """A client that acts on its answer (lists the runs, retries, sends the next turn) finds
    the run ended and recorded: on each route, ended by its deadline, by a cancel or on its
    own, the record is made before the answer's last byte (the close frame, live)."""
    deadline = {"x-adk-run-timeout": "0.5"}
    with serve(build_app(cancel_grace_s=0.3)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:

            async def ends(route: str, text: str, headers: dict[str, str]) -> list[Any]:
                sid = await asyncio.to_thread(new_session, url)
                body = run_body(sid, text, streaming=route == "run_sse")
                async with client.stream("POST", f"/{route}", json=body, headers=headers) as r:
                    await r.aread()  # the whole answer: its last byte is here
                path = session_path(sid) + "/runs"
                active = (await client.get(path)).json()["runs"]
                ended = (await client.get(path, params={"status": "all"})).json()["runs"]
                return [active, [(e["route"], e["status"]) for e in ended]]

            for route in ("run", "run_sse"):
                assert await ends(route, "tool 30", deadline) == [[], [(route, "timed_out")]]
                assert await ends(route, "quick", {}) == [[], [(route, "finished")]]

            sid = await asyncio.to_thread(new_session, url)
            live = url.replace("http", "ws", 1) + (
                f"/run_live?app_name=slow_agent&user_id=u&session_id={sid}&modalities=TEXT"
            )
            async with websockets.connect(live, additional_headers=deadline) as ws:
                message = {"content": {"role": "user", "parts": [{"text": "tool 30"}]}}
                await ws.send(json.dumps(message))
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await ws.recv()
                assert ws.close_code == 4000
                path = session_path(sid) + "/runs"
                assert (await client.get(path)).json()["runs"] == []
                [record] = (await client.get(path, params={"status": "all"})).json()["runs"]
                assert (record["route"], record["status"]) == ("run_live", "timed_out")
