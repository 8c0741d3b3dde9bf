"""Conversation turns against a real server, on each route, as a client sees them; and what
the stores hold afterwards. Shared by the busy-policy, rollback and kept-text tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from google.adk.events.event import Event
from google.adk.sessions.sqlite_session_service import SqliteSessionService
from observations import OBSERVED
from support import TEST_AGENTS, build_app, observed_of, run_body, serve, session_path

from adk_cancel.testing import unanswered_calls

APP = "recording_agent"
ROUTES = ("run", "run_sse", "run_live")


@dataclass
class Server:
    """A served app, and where its sessions live (``db``: a SQLite file, else memory)."""

    url: str
    app: Any
    db: Path | None = None

    @property
    def store(self) -> str:
        return "sqlite" if self.db else "memory"


def serve_app(tmp: Path, store: str, **options: Any) -> Iterator[Server]:
    """Serve the test agents on a ``memory`` or ``sqlite`` session store (a file in ``tmp``);
    ``options`` go to ``build_app`` and win over the store's."""
    db = tmp / "sessions.db" if store == "sqlite" else None
    extra = {"session_service_uri": f"sqlite:///{db}"} if db else {}
    app = build_app(str(TEST_AGENTS), **{**extra, **options})
    with serve(app) as url:
        yield Server(url, app, db)


@dataclass
class Turn:
    """One run as its client sees it."""

    route: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    body: Any = None
    close_code: int | None = None
    close_reason: str = ""
    sent_at: float = 0.0
    first_event_at: float | None = None
    task: asyncio.Task[None] | None = None
    ws: Any = None

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    async def finished(self, timeout: float = 15.0) -> Turn:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return self

    def streamed_text(self) -> str:
        """The text of the partial events since the last complete one: what the client
        showed of an answer in progress."""
        text = ""
        for event in self.events:
            parts = (event.get("content") or {}).get("parts") or []
            if event.get("partial"):
                text += "".join(p.get("text", "") for p in parts if not p.get("thought"))
            elif parts or event.get("turnComplete"):
                text = ""
        return text

    def partials(self) -> int:
        return sum(1 for e in self.events if e.get("partial"))

    @property
    def cancelled(self) -> dict[str, Any] | None:
        """The cancel as the client learnt it (the SSE cancelled event, the /run headers)."""
        for event in self.events:
            if event.get("errorCode") == "CANCELLED":
                return dict(event["cancelled"])
        if self.headers.get("x-adk-cancel") == "cancelled":
            return {"reason": self.headers.get("x-adk-cancel-reason")}
        return None

    @property
    def replaced(self) -> list[dict[str, Any]]:
        """The runs this one replaced, as its client was told."""
        if "x-adk-replaced" in self.headers:
            return list(json.loads(self.headers["x-adk-replaced"]))
        for event in self.events:
            if event.get("author") == "adk-cancel" and "replaced" in event:
                return list(event["replaced"])
        return []

    def answered(self) -> bool:
        """The model's answer is complete (live: its turn ended)."""
        return bool(self.texts()) or any(e.get("turnComplete") for e in self.events)

    def answer(self) -> str:
        """All the text the client was given (live: the streamed words)."""
        whole = " ".join(self.texts())
        if whole:
            return whole
        return "".join(
            p.get("text", "")
            for e in self.events
            if e.get("partial")
            for p in (e.get("content") or {}).get("parts") or []
        )

    def texts(self) -> list[str]:
        return [
            p["text"]
            for e in self.events
            if not e.get("partial")
            for p in (e.get("content") or {}).get("parts") or []
            if p.get("text")
        ]


def live_url(url: str, sid: str, policy: str | None = None, app: str = APP) -> str:
    query = f"app_name={app}&user_id=u&session_id={sid}&modalities=TEXT"
    if policy:
        query += f"&on_busy={policy}"
    return url.replace("http", "ws", 1) + "/run_live?" + query


async def start(
    http: httpx.AsyncClient,
    url: str,
    route: str,
    sid: str,
    text: str,
    *,
    policy: str | None = None,
    header: bool = True,
    app: str = APP,
    state_delta: dict[str, Any] | None = None,
) -> Turn:
    """Send ``text`` on ``route``; the turn fills in as the answer arrives. ``policy`` goes
    in the ``X-ADK-On-Busy`` header (live: the ``on_busy`` query parameter unless
    ``header``)."""
    turn = Turn(route, sent_at=time.monotonic())
    headers = {"X-ADK-On-Busy": policy} if policy else {}
    extra: dict[str, Any] = {"stateDelta": state_delta} if state_delta else {}

    def got(event: dict[str, Any]) -> None:
        if turn.first_event_at is None and event.get("author") != "adk-cancel":
            turn.first_event_at = time.monotonic()
        turn.events.append(event)

    async def run() -> None:
        body = run_body(sid, text, app=app, **extra)
        answer = await http.post(url + "/run", json=body, headers=headers, timeout=30)
        turn.status, turn.headers = answer.status_code, dict(answer.headers)
        data = answer.json()
        if isinstance(data, list):
            for event in data:
                got(event)
        else:
            turn.body = data

    async def run_sse() -> None:
        body = run_body(sid, text, app=app, streaming=True, **extra)
        async with http.stream(
            "POST", url + "/run_sse", json=body, headers=headers, timeout=30
        ) as answer:
            turn.status, turn.headers = answer.status_code, dict(answer.headers)
            if answer.status_code != 200:
                turn.body = json.loads(await answer.aread())
                return
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    got(json.loads(line[6:]))

    async def run_live() -> None:
        target = live_url(url, sid, None if header else policy, app)
        try:
            async with websockets.connect(
                target, additional_headers=headers if header else {}, open_timeout=30
            ) as ws:
                turn.status, turn.ws = 101, ws
                message = {"content": {"role": "user", "parts": [{"text": text}]}}
                await ws.send(json.dumps(message))
                async for raw in ws:
                    got(json.loads(raw))
        except websockets.InvalidStatus as exc:
            turn.status = exc.response.status_code
            turn.body = json.loads(exc.response.body or b"null")
        except websockets.ConnectionClosed:
            pass
        if turn.ws is not None and turn.ws.close_code is not None:
            turn.close_code = turn.ws.close_code
            turn.close_reason = turn.ws.close_reason or ""

    turn.task = asyncio.create_task({"run": run, "run_sse": run_sse, "run_live": run_live}[route]())
    return turn


async def close(turn: Turn) -> None:
    """End a live turn from the client side (a live run only ends when its client leaves)."""
    if turn.ws is not None:
        await turn.ws.close()
    if turn.task is not None:
        await asyncio.wait({turn.task}, timeout=10)


async def new_session(
    http: httpx.AsyncClient, url: str, state: dict[str, Any] | None = None, app: str = APP
) -> str:
    answer = await http.post(f"{url}/apps/{app}/users/u/sessions", json={"state": state or {}})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def runs(http: httpx.AsyncClient, url: str, sid: str, app: str = APP) -> list[dict[str, Any]]:
    answer = await http.get(url + session_path(sid, app) + "/runs")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["runs"])


async def cancel(
    http: httpx.AsyncClient, url: str, sid: str, app: str = APP, **body: Any
) -> dict[str, Any]:
    answer = await http.post(url + session_path(sid, app) + ":cancel", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def noted(kind: str, sid: str) -> list[dict[str, Any]]:
    return observed_of(OBSERVED, sid, kind)


def prompts(sid: str) -> list[list[dict[str, Any]]]:
    """Every prompt the model got for the session: its contents as (role, text, calls)."""
    return [o["contents"] for o in noted("model_request", sid)]


def said(prompt: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["role"], c["text"]) for c in prompt if c["text"]]


async def session(server: Server, sid: str, http: httpx.AsyncClient, app: str = APP) -> Any:
    """The session as its store holds it: read through a session service of our own on the
    SQLite file, or, for memory, through the server's (its GET route)."""
    if server.db is not None:
        service = SqliteSessionService(str(server.db))
        return await service.get_session(app_name=app, user_id="u", session_id=sid)
    answer = await http.get(server.url + session_path(sid, app))
    assert answer.status_code == 200, answer.text
    from google.adk.sessions import Session

    return Session.model_validate(answer.json())


async def stored(server: Server, sid: str, http: httpx.AsyncClient, app: str = APP) -> list[Event]:
    return list((await session(server, sid, http, app)).events)


def assert_well_formed(events: Iterable[Event]) -> None:
    """No function call without its response, and no two invocations interleaved (two runs
    of one session at once would interleave their events)."""
    events = list(events)
    assert unanswered_calls(events) == []
    order: list[str] = []
    for event in events:
        if event.actions.rewind_before_invocation_id or _ours(event):
            continue  # a rewind, or adk-cancel's state fix: not a turn's own event
        if not order or order[-1] != event.invocation_id:
            assert event.invocation_id not in order, (
                f"invocation {event.invocation_id} interleaved with another: "
                f"{[(e.invocation_id[:10], e.author) for e in events]}"
            )
            order.append(event.invocation_id)


def _ours(event: Event) -> bool:
    ours = (event.custom_metadata or {}).get("adk_cancel") or {}
    return "restored_state" in ours


def user_texts(events: Iterable[Event]) -> list[str]:
    return [
        p.text
        for e in events
        if e.author == "user" and e.content
        for p in e.content.parts or []
        if p.text
    ]


def kept(events: Iterable[Event]) -> list[Event]:
    """The interrupted model events adk-cancel kept."""
    return [e for e in events if e.interrupted and (e.custom_metadata or {}).get("adk_cancel")]
