"""Run and idle deadlines: each route's client is told the documented way, the run's record
says ``timed_out``, a deadline fires within 50 ms of its time, and bad headers get a 422.

Deadlines are short (a few tenths of a second), and how late each one fired is read from the
run's record (``cancelled_at - started_at - limit``), measured by the server itself.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from typing import Any

import click
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from support import build_app, run_body, session_path, wait_until

from adk_cancel import WS_CLOSE_CANCELLED, CancelOptions
from adk_cancel.cli import cancel_option_params, pop_cancel_options
from adk_cancel.testing import unanswered_calls

pytestmark = pytest.mark.timeout(90)

FIRE_WITHIN_S = 0.05
LIMIT_S = 0.3


@pytest.fixture(scope="module")
def warm_client() -> Iterator[TestClient]:
    """One app for the module, its agents loaded before anything is timed (ADK loads an
    agent on its first run, blocking the event loop meanwhile), its startup heap frozen as
    the CLI serves it: here that heap is the whole test session's, and a full collection of
    it stalled the loop for 300 ms once, in the middle of a timed deadline."""
    try:
        with TestClient(build_app(cancel_grace_s=0.3, gc_freeze=True)) as client:
            for app in ("slow_agent", "stubborn_agent"):
                sid = new_session(client, app)
                response = client.post("/run", json=run_body(sid, "quick", app=app))
                assert response.status_code == 200
            yield client
    finally:
        gc.unfreeze()


def new_session(client: TestClient, app: str = "slow_agent") -> str:
    return str(client.post(f"/apps/{app}/users/u/sessions", json={}).json()["id"])


def records(client: TestClient, sid: str, app: str = "slow_agent") -> list[dict[str, Any]]:
    answer = client.get(session_path(sid, app) + "/runs", params={"status": "all"})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["runs"])


def live_url(sid: str, app: str = "slow_agent") -> str:
    return f"/run_live?app_name={app}&user_id=u&session_id={sid}&modalities=TEXT"


def run_with_header(
    client: TestClient, route: str, sid: str, text: str, headers: dict[str, str]
) -> dict[str, Any]:
    """Start a run with deadline headers and read what its client gets until it ends."""
    if route == "run_live":
        with client.websocket_connect(live_url(sid), headers=headers) as ws:
            ws.send_text(json.dumps({"content": {"role": "user", "parts": [{"text": text}]}}))
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    ws.receive_text()
        return {"code": closed.value.code, "reason": closed.value.reason}
    body = run_body(sid, text, streaming=route == "run_sse")
    response = client.post(f"/{route}", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return {"headers": response.headers, "text": response.text}


def assert_fired_on_time(record: dict[str, Any], limit_s: float) -> None:
    late = record["cancelled_at"] - record["started_at"] - limit_s
    assert 0 <= late < FIRE_WITHIN_S, f"fired {late * 1000:.1f} ms after its time"


@pytest.mark.parametrize("route", ["run", "run_sse", "run_live"])
def test_run_deadline_cancels_each_route_the_documented_way(
    warm_client: TestClient, route: str
) -> None:
    client = warm_client
    sid = new_session(client)
    got = run_with_header(client, route, sid, "tool 30", {"X-ADK-Run-Timeout": f"{LIMIT_S}"})
    reason = f"deadline exceeded after {LIMIT_S:g} s"
    if route == "run":
        assert got["headers"]["x-adk-cancel"] == "cancelled"
        assert got["headers"]["x-adk-cancel-reason"] == reason
        assert json.loads(got["text"])[-1]["errorCode"] == "INVOCATION_ABORTED"
    elif route == "run_sse":
        final = json.loads(got["text"].strip().split("\n\n")[-1].split("data: ", 1)[1])
        assert final["errorCode"] == "CANCELLED"
        assert final["cancelled"]["reason"] == reason
        assert final["cancelled"]["cause"] == "deadline"
        assert final["cancelled"]["stoppedBy"] == "abort"
    else:
        assert got == {"code": WS_CLOSE_CANCELLED, "reason": f"cancelled: {reason}"}

    [record] = records(client, sid)
    assert record["status"] == "timed_out" and record["route"] == route
    assert record["cancelled_by"] == "deadline" and record["cancel_reason"] == reason
    assert record["stopped_by"] == ("force" if route == "run_live" else "abort")
    assert_fired_on_time(record, LIMIT_S)
    events = client.get(session_path(sid)).json()["events"]
    assert unanswered_calls(events) == []
    assert client.post("/run", json=run_body(sid, "quick")).status_code == 200


def test_deadlines_fire_within_50_ms_every_time(warm_client: TestClient) -> None:
    sid = new_session(warm_client)
    for _ in range(8):
        run_with_header(warm_client, "run", sid, "tool 30", {"X-ADK-Run-Timeout": "0.1"})
    fired = records(warm_client, sid)
    assert len(fired) == 8
    for record in fired:
        assert_fired_on_time(record, 0.1)


def test_idle_deadline_counts_from_the_last_event(warm_client: TestClient) -> None:
    sid = new_session(warm_client)
    got = run_with_header(warm_client, "run_sse", sid, "tool 30", {"X-ADK-Idle-Timeout": "0.3"})
    chunks = [c.split("data: ", 1)[1] for c in got["text"].strip().split("\n\n")]
    events = [json.loads(c) for c in chunks]
    assert events[-1]["cancelled"]["reason"] == "no event for 0.3 s"
    # The model streamed a sentence and called the tool at once; then nothing came.
    [record] = records(warm_client, sid)
    # (The events after it are the cancel's: ADK's abort seal and adk-cancel's final event.)
    made = [e["timestamp"] for e in events if not e.get("errorCode")]
    last_event_at = max(t for t in made if t <= record["cancelled_at"])
    assert record["status"] == "timed_out" and record["cancel_reason"] == "no event for 0.3 s"
    quiet = record["cancelled_at"] - last_event_at
    # ADK stamps an event before the runner, the plugins and the stream have carried it; the
    # deadline counts from its sending, so the quiet measured here also holds that trip
    # (2-5 ms quiet, up to ~25 ms on a loaded machine).
    assert 0.3 - 0.005 <= quiet < 0.3 + FIRE_WITHIN_S + 0.05, quiet


def test_streamed_events_keep_an_idle_deadline_from_firing(warm_client: TestClient) -> None:
    sid = new_session(warm_client)
    # Ten words 0.1 s apart, one second in all: never 0.3 s without an event.
    got = run_with_header(warm_client, "run_sse", sid, "words 10", {"X-ADK-Idle-Timeout": "0.3"})
    assert "event: cancelled" not in got["text"]
    [record] = records(warm_client, sid)
    assert record["status"] == "finished" and record["cancel_reason"] is None


def test_a_run_that_ignores_the_abort_is_forced_at_its_deadline(warm_client: TestClient) -> None:
    sid = new_session(warm_client, "stubborn_agent")
    body = run_body(sid, "tool 30", app="stubborn_agent")
    answer = warm_client.post("/run", json=body, headers={"X-ADK-Run-Timeout": "0.2"})
    assert answer.headers["x-adk-cancel-reason"] == "deadline exceeded after 0.2 s"
    [record] = records(warm_client, sid, "stubborn_agent")
    assert record["status"] == "timed_out" and record["stopped_by"] == "force"
    events = warm_client.get(session_path(sid, "stubborn_agent")).json()["events"]
    assert unanswered_calls(events) == []


def test_a_cancel_before_the_deadline_wins(warm_client: TestClient) -> None:
    sid = new_session(warm_client)
    thread = threading.Thread(
        target=lambda: warm_client.post(
            "/run", json=run_body(sid, "tool 30"), headers={"X-ADK-Run-Timeout": "0.5"}
        ),
        daemon=True,
    )
    thread.start()
    wait_until(lambda: warm_client.get(session_path(sid) + "/runs").json()["runs"])
    assert warm_client.post(session_path(sid) + ":cancel", json={"reason": "me"}).status_code == 200
    thread.join(5)
    [record] = records(warm_client, sid)
    assert record["status"] == "cancelled" and record["cancelled_by"] == "request"


def test_server_default_and_cap() -> None:
    with TestClient(build_app(run_timeout_s=0.2, max_run_timeout_s=0.4)) as client:
        sid = new_session(client)
        plain = client.post("/run", json=run_body(sid, "tool 30"))
        assert plain.headers["x-adk-cancel-reason"] == "deadline exceeded after 0.2 s"
        asked = client.post(
            "/run", json=run_body(sid, "tool 30"), headers={"X-ADK-Run-Timeout": "60"}
        )
        assert asked.headers["x-adk-cancel-reason"] == "deadline exceeded after 0.4 s"
        quick = client.post(
            "/run", json=run_body(sid, "quick"), headers={"X-ADK-Run-Timeout": "0.3"}
        )
        assert "x-adk-cancel" not in quick.headers
        statuses = [r["status"] for r in records(client, sid)]
        assert statuses == ["finished", "timed_out", "timed_out"]


def test_options_refuse_a_default_above_its_cap_and_bad_numbers() -> None:
    with pytest.raises(ValueError, match=r"run_timeout_s .* is above max_run_timeout_s"):
        CancelOptions(run_timeout_s=10, max_run_timeout_s=5)
    with pytest.raises(ValueError, match="idle_timeout_s must be a number of seconds > 0"):
        CancelOptions(idle_timeout_s=0)
    with pytest.raises(ValueError, match="run_records_per_session must be a whole number"):
        CancelOptions(run_records_per_session=-1)


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", "", "1e999"])
@pytest.mark.parametrize("header", ["X-ADK-Run-Timeout", "X-ADK-Idle-Timeout"])
def test_bad_deadline_headers_get_a_422_and_start_nothing(
    warm_client: TestClient, header: str, value: str
) -> None:
    sid = new_session(warm_client)
    for route in ("run", "run_sse"):
        body = run_body(sid, "tool 30", streaming=route == "run_sse")
        answer = warm_client.post(f"/{route}", json=body, headers={header: value})
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert detail.startswith(f"The {header.lower()} header must be a number of seconds > 0")
    with pytest.raises(WebSocketDenialResponse) as denied:
        with warm_client.websocket_connect(live_url(sid), headers={header: value}):
            pass
    assert denied.value.status_code == 422
    assert records(warm_client, sid) == []
    assert warm_client.get(session_path(sid)).json()["events"] == []


def test_the_cli_has_a_flag_for_each_limit_and_refuses_a_default_above_its_cap() -> None:
    params = {p.name: p for p in cancel_option_params()}
    for name in ("run_timeout_s", "max_run_timeout_s", "idle_timeout_s", "max_idle_timeout_s"):
        assert params[name].opts == [f"--{name}"] and params[name].default is None
    with pytest.raises(click.UsageError, match=r"lower it or raise the cap"):
        pop_cancel_options({"run_timeout_s": 5.0, "max_run_timeout_s": 1.0})
    assert pop_cancel_options({"idle_timeout_s": 10.0}).idle_timeout_s == 10.0


def test_gc_freeze_moves_the_startup_heap_out_of_the_collectors_reach() -> None:
    # Full collections of an ADK server's heap pause the loop for 100-250 ms: every deadline
    # due meanwhile would fire that late. The CLI freezes by default; Python asks for it.
    gc.unfreeze()
    try:
        with TestClient(build_app()):
            assert gc.get_freeze_count() == 0
        with TestClient(build_app(gc_freeze=True)):
            assert gc.get_freeze_count() > 100_000
    finally:
        gc.unfreeze()
