"""What google-adk 2.14/2.15 changed under adk-cancel, each against a real uvicorn server with
the timing that broke it forced (a session write held, a client socket that is slow to take
an answer), on every supported ADK.

- ADK's live handler closes the socket itself as soon as either of its tasks ends (2.13
  waited for both): a live run whose stream ended on the cancel's abort was closed 1000
  before adk-cancel's 4000.
- A forced cancel landing while a ``/run`` answer was being written cut it after its headers
  (``Content-Length`` declared, no body: h11's "Too little data").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from google.adk.cli.service_registry import get_service_registry
from google.adk.sessions import BaseSessionService
from support import HeldUserWrite, build_app, observed_of, run_body, serve, session_path, until

from adk_cancel import WS_CLOSE_CANCELLED
from adk_cancel.testing import unanswered_calls

pytestmark = pytest.mark.timeout(90)

ADK_STREAM_ENDED = "Root node {} was cancelled."
"""ADK's log line when its live stream ended and it cancelled the agent behind it."""


@contextmanager
def served_on(service: BaseSessionService, **options: Any) -> Iterator[str]:
    """A real server of the test agents whose sessions live in ``service`` (ADK builds
    session services from URIs: it is registered under a scheme of its own)."""
    scheme = "heldwrite" + str(id(service))
    get_service_registry().register_session_service(scheme, lambda uri, **kw: service)
    with serve(build_app(session_service_uri=f"{scheme}://", **options)) as url:
        yield url


def live_url(base_url: str, app: str, sid: str) -> str:
    ws_url = base_url.replace("http", "ws", 1)
    return f"{ws_url}/run_live?app_name={app}&user_id=u&session_id={sid}&modalities=TEXT"


def text_message(text: str) -> str:
    return json.dumps({"content": {"role": "user", "parts": [{"text": text}]}})


async def new_session(client: httpx.AsyncClient, app: str) -> str:
    answer = await client.post(f"/apps/{app}/users/u/sessions", json={})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def runs_of(client: httpx.AsyncClient, app: str, sid: str) -> list[dict[str, Any]]:
    return list((await client.get(session_path(sid, app) + "/runs")).json()["runs"])


async def close_of(ws: Any) -> Any:
    """What the server closed the socket with (reading whatever comes before it)."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    return closed.value.rcvd


async def test_a_live_run_whose_adk_stream_ended_on_the_abort_is_closed_4000(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ADK's live stream ends on the cancel's abort (its event queue reader stops on it) and,
    from google-adk 2.14 on, its handler then closes the socket with 1000 at once; 2.13 waited
    for its socket reader too, so adk-cancel's force came first. The client must get the
    cancel's 4000 either way (as it must when ADK closes 1011 after a failure on the way
    out: the same close, held back)."""
    caplog.set_level(logging.INFO, logger="google_adk")
    app, first_message = "slow_agent", "tool 20"
    service = HeldUserWrite(str(tmp_path / "sessions.db"))
    with served_on(service) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            sid = await new_session(client, app)
            service.hold.set()
            async with websockets.connect(live_url(url, app, sid)) as ws:
                await ws.send(text_message(first_message))
                assert await asyncio.to_thread(service.held.wait, 10)
                answer = await client.post(
                    session_path(sid, app) + ":cancel", json={"wait": False, "reason": "stop"}
                )
                assert answer.status_code == 202, answer.text
                # The abort has ended ADK's stream while the force still waits for the held
                # write: this is when ADK closes the socket itself.
                await until(
                    lambda: ADK_STREAM_ENDED.format(app) in caplog.text,
                    what="ADK ending its live stream (and, before the fix, closing 1000)",
                )
                service.release.set()
                closed = await close_of(ws)
            assert closed is not None
            assert (closed.code, closed.reason) == (WS_CLOSE_CANCELLED, "cancelled: stop")
            await until(
                lambda: _no_runs(client, app, sid), what="the live run leaving the registry"
            )
            events = (await client.get(session_path(sid, app))).json()["events"]
            assert unanswered_calls(events) == []


async def _no_runs(client: httpx.AsyncClient, app: str, sid: str) -> bool:
    return await runs_of(client, app, sid) == []


def _slow_to_take_answers(app: Any, delay_s: float) -> Any:
    """``app`` behind a client whose socket is full when a ``/run`` answer's body is written:
    uvicorn's ``send`` waits for it to drain (``flow.drain()``) before it writes, here
    ``delay_s``, after the headers went out."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/run":
            await app(scope, receive, send)
            return

        async def draining_send(message: Any) -> None:
            if message["type"] == "http.response.body":
                await asyncio.sleep(delay_s)
            await send(message)

        await app(scope, receive, draining_send)

    return wrapped


async def test_a_run_answer_being_written_is_not_cut_by_the_force(
    observed: list[dict[str, Any]],
) -> None:
    """The stubborn tool swallows the abort; the force cancels ADK's task; ADK then answers
    with the run's events (JSON, ``Content-Length``), and while that answer's body waits
    for a slow client the force must not cancel ADK again: the client gets the whole answer,
    never headers without their body."""
    app = "stubborn_agent"
    grace_s = 0.3
    with serve(_slow_to_take_answers(build_app(cancel_grace_s=grace_s), 0.5)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            sid = await new_session(client, app)
            run = asyncio.create_task(client.post("/run", json=run_body(sid, "tool 5", app=app)))
            await until(lambda: observed_of(observed, sid, "tool_started"), what="the tool")
            first = await client.post(session_path(sid, app) + ":cancel", json={"wait": False})
            assert first.status_code == 202, first.text
            second = await client.post(session_path(sid, app) + ":cancel", json={"wait": True})
            assert second.status_code == 200, second.text
            [stopped] = second.json()["runs"]
            assert stopped["stopped_by"] == "force"
            answer = await asyncio.wait_for(run, 10)
    assert answer.status_code == 200
    assert answer.headers["x-adk-cancel"] == "cancelled"
    assert int(answer.headers["content-length"]) == len(answer.content)
    events = answer.json()
    assert events and events[-1].get("errorCode") in ("CANCELLED", "INVOCATION_ABORTED")
    assert observed_of(observed, sid, "tool_ignored_cancel")


class _BodyAfterStart:
    """Inside adk-cancel, before ADK: the body of a ``/run`` answer follows its headers
    ``delay_s`` later, as it does a task hop later behind ADK's BaseHTTPMiddleware (2.14+)."""

    def __init__(self, app: Any, delay_s: float) -> None:
        self.app, self.delay_s = app, delay_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/run":
            await self.app(scope, receive, send)
            return

        async def later(message: Any) -> None:
            if message["type"] == "http.response.body":
                await asyncio.sleep(self.delay_s)
            await send(message)

        await self.app(scope, receive, later)


async def test_a_cancel_between_a_run_answers_headers_and_body_is_too_late() -> None:
    """The answer's headers went out without ``x-adk-cancel``: a cancel arriving before its
    body cannot tell the client any more, so it must not report the run as stopped by an
    abort (the client would never know): the run is ``finished``, its answer whole."""
    from google.adk.cli.fast_api import get_fast_api_app
    from support import TEST_AGENTS, memory_services

    import adk_cancel

    app = get_fast_api_app(
        agents_dir=str(TEST_AGENTS), extra_plugins=[adk_cancel.PLUGIN_PATH], **memory_services()
    )
    app.add_middleware(_BodyAfterStart, delay_s=1.0)
    adk_cancel.install(app)
    with serve(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            sid = await new_session(client, "slow_agent")
            async with client.stream(
                "POST", "/run", json=run_body(sid, "quick", app="slow_agent")
            ) as answer:
                # Headers are here; the body follows in a second.
                cancel = await client.post(session_path(sid, "slow_agent") + ":cancel", json={})
                body = await answer.aread()
    told = answer.headers.get("x-adk-cancel") == "cancelled"
    if cancel.status_code == 200:
        [run] = cancel.json()["runs"]
        assert (run["stopped_by"] in ("abort", "force")) == told, (run, dict(answer.headers))
        assert run["stopped_by"] == "finished", run
    else:
        assert cancel.status_code == 404, cancel.text  # already unlisted: as good
    assert not told
    events = json.loads(body)
    assert events[-1]["content"]["parts"][0]["text"] == "Here is a quick answer."
