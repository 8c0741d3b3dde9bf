"""Runs that outlive their connection, on one worker (memory://), against real uvicorn:
the disconnect policy, SSE ids, and rejoining a run's stream (replay, follow, bounds).

Every wait is on an event the server sent or stored (an id, a tool that started), never on a
sleep that usually wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import build_app, observed_of, run_body, serve, session_path, wait_until

from adk_cancel.testing import SseEvent, events_path, parse_sse, unanswered_calls

pytestmark = pytest.mark.timeout(90)

CONTINUE = {"X-ADK-On-Disconnect": "continue"}


@pytest.fixture(scope="module", params=["2.3", "2.4"])
def base_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with serve(build_app(), spec_version=request.param) as url:
        yield url


@pytest.fixture(scope="module")
def small_url() -> Iterator[str]:
    """A server whose logs keep 5 events, and keep them 1 s after the run."""
    with serve(build_app(stream_max_events=5, stream_keep_s=1.0)) as url:
        yield url


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """ERROR records, tracebacks and unretrieved task exceptions the server logged."""
    caplog.set_level(logging.WARNING)

    def errors() -> list[str]:
        gc.collect()
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.ERROR or r.exc_info or "never retrieved" in r.getMessage()
        ]

    return errors


def stored_events(url: str, sid: str) -> list[dict[str, Any]]:
    return list(httpx.get(url + session_path(sid)).json()["events"])


def new_session(url: str) -> str:
    return str(httpx.post(f"{url}/apps/slow_agent/users/u/sessions", json={}).json()["id"])


def runs(url: str, sid: str) -> list[dict[str, Any]]:
    return list(httpx.get(url + session_path(sid) + "/runs").json()["runs"])


class Reader:
    """One SSE client: what it read, as text and as events."""

    def __init__(self) -> None:
        self.text = ""
        self.headers: httpx.Headers | None = None
        self.status = 0
        self.done = False

    @property
    def events(self) -> list[SseEvent]:
        return parse_sse(self.text)

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events if e.id is not None]

    async def read(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        until_id: int | None = None,
        **kwargs: Any,
    ) -> Reader:
        """Read the stream to its end, or until the event ``until_id`` and then leave (the
        connection closes mid-stream)."""
        async with client.stream(method, url, **kwargs) as response:
            self.status, self.headers = response.status_code, response.headers
            async for chunk in response.aiter_text():
                self.text += chunk
                if until_id is not None and until_id in self.ids:
                    return self
        self.done = True
        return self


async def follow(
    client: httpx.AsyncClient,
    url: str,
    sid: str,
    run_id: str,
    reader: Reader | None = None,
    **kwargs: Any,
) -> Reader:
    """Rejoin a run's stream and read it to its end."""
    reader = reader or Reader()
    return await reader.read(client, "GET", url + events_path(sid, run_id), **kwargs)


def final_text(events: list[SseEvent]) -> str:
    last = events[-1].json()
    return " ".join(p.get("text", "") for p in last["content"]["parts"])


async def test_run_sse_events_carry_ids_and_the_run_is_named(base_url: str) -> None:
    sid = new_session(base_url)
    async with httpx.AsyncClient(timeout=20) as client:
        direct = await Reader().read(
            client, "POST", base_url + "/run_sse", json=run_body(sid, "words 5", streaming=True)
        )
        assert direct.headers is not None
        assert direct.headers["x-adk-on-disconnect"] == "cancel"
        run_id = direct.headers["x-adk-run-id"]
        # Every event has an id, counting from 1, and the ids are all the stream adds.
        assert direct.ids == list(range(1, 7))
        assert [e.id for e in direct.events] == direct.ids
        assert final_text(direct.events) == "word0 word1 word2 word3 word4"
        # With the default policy nothing is kept: a rejoin is told why.
        await asyncio.to_thread(wait_until, lambda: runs(base_url, sid) == [], 5)
        answer = await client.get(base_url + events_path(sid, run_id))
        assert answer.status_code == 404  # it has ended, and kept nothing
        running = asyncio.create_task(
            Reader().read(
                client, "POST", base_url + "/run_sse", json=run_body(sid, "tool 30", streaming=True)
            )
        )
        await asyncio.to_thread(wait_until, lambda: runs(base_url, sid), 10)
        [run] = runs(base_url, sid)
        assert run["on_disconnect"] == "cancel" and run["detached"] is False
        answer = await client.get(base_url + events_path(sid, run["run_id"]))
        assert answer.status_code == 409
        assert "X-ADK-On-Disconnect: continue" in answer.json()["detail"]
        await client.post(base_url + session_path(sid) + ":cancel")
        await running


@pytest.mark.parametrize("route", ["run", "run_sse"])
async def test_a_client_leaving_under_continue_lets_the_run_finish(
    base_url: str,
    route: str,
    observed: list[dict[str, Any]],
    server_errors: Callable[[], list[str]],
) -> None:
    sid = new_session(base_url)
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
        body = run_body(sid, "tool 1", streaming=route == "run_sse")
        request = asyncio.create_task(client.post(f"/{route}", json=body, headers=CONTINUE))
        while not observed_of(observed, sid, "tool_started"):
            await asyncio.sleep(0.01)
        request.cancel()  # closes the connection mid-run
        with pytest.raises(asyncio.CancelledError):
            await request
        # The run goes on without anyone attached, and its record says so.
        [run] = await asyncio.to_thread(
            wait_until, lambda: [r for r in runs(base_url, sid) if r["detached"]], 5
        )
        assert run["on_disconnect"] == "continue" and run["status"] == "running"
        await asyncio.to_thread(wait_until, lambda: runs(base_url, sid) == [], 10)
    assert observed_of(observed, sid, "tool_finished")
    assert not observed_of(observed, sid, "tool_cancelled")
    events = stored_events(base_url, sid)
    assert not [e for e in events if e.get("errorCode")]  # nothing aborted it
    assert unanswered_calls(events) == []
    texts = [p.get("text") for e in events for p in (e.get("content") or {}).get("parts", [])]
    assert texts[-1] == "The lookup is done."  # the answer after the tool, stored
    assert server_errors() == []


async def test_rejoin_from_the_start_from_a_middle_id_and_after_the_end(base_url: str) -> None:
    sid = new_session(base_url)
    async with httpx.AsyncClient(timeout=20) as client:
        body = run_body(sid, "words 12", streaming=True)
        first = await Reader().read(
            client, "POST", base_url + "/run_sse", json=body, headers=CONTINUE, until_id=4
        )
        assert first.headers is not None and first.headers["x-adk-on-disconnect"] == "continue"
        run_id = first.headers["x-adk-run-id"]
        seen = max(first.ids)
        # Resume where it stopped: nothing missed, nothing twice, in order, to the end.
        rest = await follow(client, base_url, sid, run_id, headers={"Last-Event-ID": str(seen)})
        assert rest.status == 200 and rest.done
        assert rest.ids == list(range(seen + 1, 14))
        assert final_text(rest.events) == " ".join(f"word{i}" for i in range(12))
        # From the start, after the end: the very same bytes, the first client's included.
        replay = await follow(client, base_url, sid, run_id)
        assert replay.ids == list(range(1, 14))
        assert replay.text.startswith(first.text[: first.text.rindex("\n\n") + 2])
        assert replay.text.endswith(rest.text)
        # The query parameter serves a first connection that cannot send headers; the
        # header (what EventSource sends when it reconnects) wins over it.
        url = base_url + events_path(sid, run_id)
        by_query = await Reader().read(client, "GET", url + "?last_event_id=10")
        assert by_query.ids == [11, 12, 13]
        both = await Reader().read(
            client, "GET", url + "?last_event_id=2", headers={"Last-Event-ID": "12"}
        )
        assert both.ids == [13]
        # Caught up with an ended run: 204, which tells an EventSource to stop.
        assert (await client.get(url, headers={"Last-Event-ID": "13"})).status_code == 204
        past = await client.get(url, headers={"Last-Event-ID": "14"})
        assert past.status_code == 422 and past.json()["detail"][0]["loc"] == [
            "header",
            "last-event-id",
        ]
        for bad in ("x", "-1", "1.5", "9" * 19):
            answer = await client.get(url, headers={"Last-Event-ID": bad})
            assert answer.status_code == 422, bad
        # Another user's (or session's) path does not find the run.
        other = base_url + events_path(sid, run_id, user="someone-else")
        assert (await client.get(other)).status_code == 404
        assert (await client.get(base_url + events_path(sid, "no-such-run"))).status_code == 404


async def test_two_followers_at_once_get_the_same_stream(base_url: str) -> None:
    sid = new_session(base_url)
    async with httpx.AsyncClient(timeout=20) as client:
        body = run_body(sid, "words 15", streaming=True)
        direct = Reader()
        direct_task = asyncio.create_task(
            direct.read(client, "POST", base_url + "/run_sse", json=body, headers=CONTINUE)
        )
        while not direct.ids or direct.ids[-1] < 3:
            await asyncio.sleep(0.01)
        assert direct.headers is not None
        run_id = direct.headers["x-adk-run-id"]
        from_start, from_now = await asyncio.gather(
            follow(client, base_url, sid, run_id),
            follow(client, base_url, sid, run_id, headers={"Last-Event-ID": "3"}),
        )
        await direct_task
    assert direct.ids == from_start.ids == list(range(1, 17))
    assert from_start.text == direct.text
    assert from_now.ids == list(range(4, 17))
    assert from_start.events[-1] == from_now.events[-1] == direct.events[-1]


async def test_cancel_of_a_run_nobody_is_attached_to(
    base_url: str,
    observed: list[dict[str, Any]],
    server_errors: Callable[[], list[str]],
) -> None:
    sid = new_session(base_url)
    async with httpx.AsyncClient(timeout=20) as client:
        body = run_body(sid, "tool 30", streaming=True)
        first = await Reader().read(
            client, "POST", base_url + "/run_sse", json=body, headers=CONTINUE, until_id=1
        )
        assert first.headers is not None
        run_id = first.headers["x-adk-run-id"]
        while not observed_of(observed, sid, "tool_started"):
            await asyncio.sleep(0.01)
        await asyncio.to_thread(
            wait_until, lambda: [r for r in runs(base_url, sid) if r["detached"]], 5
        )
        follower = Reader()
        following = asyncio.create_task(follow(client, base_url, sid, run_id, reader=follower))
        answer = await client.post(
            base_url + session_path(sid) + ":cancel", json={"reason": "nobody is reading"}
        )
        assert answer.status_code == 200, answer.text
        [stopped] = answer.json()["runs"]
        assert stopped["stopped_by"] == "abort" and stopped["run_id"] == run_id
        await asyncio.wait_for(following, 5)
        # The follower, and anyone who replays the run later, sees how it ended.
        replay = await follow(client, base_url, sid, run_id)
    for reader in (follower, replay):
        last = reader.events[-1]
        assert last.event == "cancelled" and last.id == reader.ids[-1]
        assert last.json()["cancelled"]["reason"] == "nobody is reading"
    assert observed_of(observed, sid, "tool_cancelled")
    assert runs(base_url, sid) == []
    assert unanswered_calls(stored_events(base_url, sid)) == []
    assert server_errors() == []


async def test_the_server_default_policy_and_the_header_that_overrides_it() -> None:
    with serve(build_app(on_disconnect="continue")) as url:
        sid = new_session(url)
        async with httpx.AsyncClient(timeout=20) as client:
            body = run_body(sid, "quick", streaming=True)
            kept = await Reader().read(client, "POST", url + "/run_sse", json=body)
            assert kept.headers is not None and kept.headers["x-adk-on-disconnect"] == "continue"
            replay = await follow(client, url, sid, kept.headers["x-adk-run-id"])
            assert replay.text == kept.text
            not_kept = await Reader().read(
                client,
                "POST",
                url + "/run_sse",
                json=body,
                headers={"x-adk-on-disconnect": "Cancel"},
            )
            assert not_kept.headers is not None
            assert not_kept.headers["x-adk-on-disconnect"] == "cancel"
            await asyncio.to_thread(wait_until, lambda: runs(url, sid) == [], 5)
            answer = await client.get(url + events_path(sid, not_kept.headers["x-adk-run-id"]))
            assert answer.status_code == 404
            bad = await client.post(
                url + "/run_sse", json=body, headers={"X-ADK-On-Disconnect": "linger"}
            )
            assert bad.status_code == 422
            assert "'cancel'" in bad.json()["detail"] and "'linger'" in bad.json()["detail"]
            assert runs(url, sid) == []


async def test_a_log_past_its_bound_drops_the_oldest_and_says_so(small_url: str) -> None:
    sid = new_session(small_url)
    async with httpx.AsyncClient(timeout=20) as client:
        body = run_body(sid, "words 12", streaming=True)
        direct = await Reader().read(
            client, "POST", small_url + "/run_sse", json=body, headers=CONTINUE
        )
        assert direct.headers is not None
        run_id = direct.headers["x-adk-run-id"]
        assert direct.ids == list(range(1, 14))  # its own client got every event
        url = small_url + events_path(sid, run_id)
        for after in ("0", "7"):
            gone = await client.get(url, headers={"Last-Event-ID": after})
            assert gone.status_code == 410, after
            assert gone.json()["first_kept_id"] == 9
            assert "Last-Event-ID: 8" in gone.json()["detail"]
        kept = await Reader().read(client, "GET", url, headers={"Last-Event-ID": "8"})
        assert kept.ids == [9, 10, 11, 12, 13]
        assert direct.text.endswith(kept.text)
        # Kept for stream_keep_s after the run, then forgotten.
        await asyncio.sleep(1.2)
        assert (await client.get(url, headers={"Last-Event-ID": "8"})).status_code == 404


async def test_a_log_past_its_byte_bound_keeps_the_newest() -> None:
    with serve(build_app(stream_max_bytes=1500)) as url:
        sid = new_session(url)
        async with httpx.AsyncClient(timeout=20) as client:
            body = run_body(sid, "words 12", streaming=True)
            direct = await Reader().read(
                client, "POST", url + "/run_sse", json=body, headers=CONTINUE
            )
            assert direct.headers is not None
            path = url + events_path(sid, direct.headers["x-adk-run-id"])
            gone = await client.get(path)
            assert gone.status_code == 410
            first_kept = gone.json()["first_kept_id"]
            kept = await Reader().read(
                client, "GET", path, headers={"Last-Event-ID": str(first_kept - 1)}
            )
    assert kept.ids == list(range(first_kept, 14))
    assert len(kept.text.encode()) <= 1500
    assert json.loads(kept.events[-1].data)["finishReason"] == "STOP"


@pytest.mark.parametrize("policy", ["continue", "cancel"])
async def test_a_client_that_stops_reading_holds_up_only_a_cancel_run(policy: str) -> None:
    """A client whose network vanished without a close: the server's sends to it block (the
    socket's buffers are full) and no disconnect ever comes. Forced here by a ``send`` that
    never returns after the first event. ADK paces its stream by its client's reads, so under
    ``cancel`` the run waits on it; under ``continue`` the run goes on to its end."""
    app = build_app()
    stuck = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            stuck.set()
            await asyncio.Event().wait()  # never returns

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        sid = (await client.post("/apps/slow_agent/users/u/sessions", json={})).json()["id"]
        body = json.dumps(run_body(sid, "words 5", streaming=True))
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body.encode(), "more_body": False}
            await asyncio.Event().wait()  # the client never leaves either
            raise AssertionError("unreachable")

        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/run_sse",
            "raw_path": b"/run_sse", "root_path": "", "query_string": b"",
            "headers": [(b"content-type", b"application/json"),
                        (b"x-adk-on-disconnect", policy.encode())],
            "client": ("127.0.0.1", 1), "server": ("test", 80),
        }  # fmt: skip
        request = asyncio.create_task(app(scope, receive, send))
        try:
            await asyncio.wait_for(stuck.wait(), 10)

            async def answered() -> bool:
                events = (await client.get(session_path(sid))).json()["events"]
                return any(e.get("finishReason") == "STOP" for e in events)

            if policy == "continue":
                while not await answered():  # the whole answer, stored: the run has ended
                    await asyncio.sleep(0.05)
                # And unlisted, while its request goes on trying to send its client the rest.
                while (await client.get(session_path(sid) + "/runs")).json()["runs"]:
                    await asyncio.sleep(0.05)
                assert not request.done()
            else:
                # 5 words take 0.5 s; give it 3 s: the run is still waiting on its client.
                await asyncio.sleep(3)
                assert not await answered()
                [run] = (await client.get(session_path(sid) + "/runs")).json()["runs"]
                assert run["status"] == "running"
        finally:
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    run_id=st.text(min_size=1, max_size=40),
    last_event_id=st.none() | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255)),
    query=st.none() | st.text(max_size=30),
    policy=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=20),
)
def test_bad_input_to_the_rejoin_route_and_the_policy_header_is_a_4xx(
    rejoin_client: TestClient,
    run_id: str,
    last_event_id: str | None,
    query: str | None,
    policy: str,
) -> None:
    path = events_path("some-session", quote(run_id.encode("utf-8", "surrogatepass"), safe=""))
    # Header values as a client can send them: bytes, any of latin-1.
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id.encode("latin-1")}
    params = {} if query is None else {"last_event_id": query}
    answer = rejoin_client.get(path, headers=headers, params=params)
    assert answer.status_code in (404, 422), answer.text
    if answer.status_code == 422:
        assert answer.json()["detail"][0]["loc"] == ["header", "last-event-id"]
    body = run_body("some-session", "quick", streaming=True)
    started = rejoin_client.post(
        "/run_sse", json=body, headers={"X-ADK-On-Disconnect": policy.encode("latin-1")}
    )
    assert started.status_code in (200, 404, 422), started.text
    if policy.strip().lower() not in ("cancel", "continue"):
        assert started.status_code == 422 and "X-ADK-On-Disconnect" in started.json()["detail"]


@pytest.fixture(scope="module")
def rejoin_client() -> Iterator[TestClient]:
    with TestClient(build_app(), raise_server_exceptions=False) as client:
        yield client
