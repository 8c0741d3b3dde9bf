"""``GET .../sessions/{session_id}/runs/{run_id}/events``: rejoin a run's event stream.

Replays the run's log (``_stream.py``) from the start, or from after the id in the
``Last-Event-ID`` header (or the ``last_event_id`` query parameter, for a first connection
that cannot set headers), then follows the live run to its end: the same bytes, ids and final
event its ``/run_sse`` client got. Any number of clients can follow one run. Through the
worker that holds the run, followers read its log in memory; through another worker, they
read the copy the backend keeps (Redis Streams), which the holder writes event by event.

| case                                   | answer                                                |
|----------------------------------------|-------------------------------------------------------|
| the run's log is kept here or in Redis | 200, ``text/event-stream``: replay, follow, the end   |
| the client already has every event     | 204 (an ``EventSource`` stops reconnecting)           |
| events it asks for have dropped out    | 410 with ``first_kept_id``: never a stream with a gap |
| the run is active but keeps no log     | 409: its policy is ``cancel``, or it is no SSE run     |
| no such run of this session            | 404 (also once its log expired)                       |
| a ``Last-Event-ID`` that is no id      | 422                                                   |
| the backend is unreachable             | 503                                                   |

A stream that ends before the run's end says why as its last event: ``event: error`` when
rejoining cannot help (this client fell behind the log's bounds, the run's worker died), or
``event: reconnect`` when it can (this server is shutting down: rejoin through another).
While the backend is unreachable a follower through another worker waits, with an SSE
comment every ``PING_S`` to keep its connection open, and goes on where it was once the
backend is back and the run's worker has written its log again: nothing missed, nothing
twice. A follower through the run's own worker does not notice the outage.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, MutableMapping
from contextlib import aclosing
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.responses import Response

from ._models import SessionKey
from ._registry import RunRegistry
from ._routes import SESSION_PATH, _Route, _unavailable
from ._run_output import POLICY_HEADER, RUN_ID_HEADER, fell_behind
from ._stream import RunStream, StreamGap, StreamPage
from .backends import BackendUnavailable, StreamBackend

EVENTS_PATH = SESSION_PATH + "/runs/{run_id}/events"
PING_S = 15.0
"""An idle stream gets an SSE comment this often (proxies drop idle connections)."""
REMOTE_WAIT_S = 5.0
"""A follower through another worker waits this long per read, then checks the run lives."""
RETRY_S = 0.5
"""Pause between reads while the backend is unreachable."""
LOST_CHECKS = 2
"""A run unlisted on this many checks in a row (``REMOTE_WAIT_S`` apart), its log unended,
died with its worker."""
PING = b": ping\n\n"

Scope = MutableMapping[str, Any]

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The run's events as Server-Sent Events, each with its `id:`; the "
        "stream ends with the run's final event (`event: cancelled` for a cancelled run).",
        "content": {"text/event-stream": {}},
    },
    204: {"description": "The client has every event of this (ended) run already."},
    404: {"description": "No such run of this session is active or kept for rejoining."},
    409: {
        "description": "The run is active but keeps no log: it was started with the "
        "disconnect policy `cancel`, or it is no /run_sse run."
    },
    410: {
        "description": "Events after the given id dropped out of the run's log (it outgrew "
        "its bounds); the answer says the oldest id kept."
    },
    422: {"description": "`Last-Event-ID` (or `last_event_id`) is not an id of this run."},
    503: {"description": "The cancel backend (e.g. Redis) is unreachable."},
}


def _event(kind: str, detail: dict[str, Any], retry_ms: int | None = None) -> bytes:
    retry = b"retry: %d\n" % retry_ms if retry_ms is not None else b""
    return retry + f"event: {kind}\ndata: {json.dumps(detail)}\n\n".encode()


def _bad_id(value: str, why: str) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": ["header", "last-event-id"], "msg": why, "type": "value_error", "input": value}]
    )


def _after(header: str | None, query: str | None) -> int:
    """The id the client has (0: none). The header wins: ``EventSource`` sends it on every
    reconnect, to the URL (and query) it was first given."""
    raw = header if header is not None else query
    if raw is None or raw.strip() == "":
        return 0
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise _bad_id(raw, "Last-Event-ID must be the id of an event of this run (a whole number)")
    return int(text)


def _gone(key: SessionKey, run_id: str, keep_s: float) -> JSONResponse:
    return JSONResponse(
        {
            "detail": f"No run {run_id!r} of session {key.session_id!r} of user "
            f"{key.user_id!r} in app {key.app_name!r} is active or kept for rejoining (a "
            f"run's events are kept {keep_s:g} s after it ended)."
        },
        status_code=404,
    )


def _not_kept(run_id: str, route: str) -> JSONResponse:
    if route == "run":
        why = (
            "it was started by /run, whose answer is one JSON document, not an event stream: "
            "read its events from the session once it has ended"
        )
    elif route == "run_live":
        why = "it is a /run_live conversation: only its websocket gets its events"
    else:
        why = (
            "it was started with the disconnect policy 'cancel', so it ends when its client "
            "leaves. Send X-ADK-On-Disconnect: continue with /run_sse (or start the server "
            "with --on_disconnect continue) to make runs rejoinable"
        )
    return JSONResponse({"detail": f"Run {run_id!r} keeps no event log: {why}."}, 409)


def _dropped(run_id: str, after: int, first_id: int) -> JSONResponse:
    return JSONResponse(
        {
            "detail": f"Events {after + 1} to {first_id - 1} of run {run_id!r} dropped out of "
            "its log (the run outgrew stream_max_events or stream_max_bytes). Rejoin with "
            f"Last-Event-ID: {first_id - 1} to read on from the oldest event kept, or read the "
            "session's stored events.",
            "first_kept_id": first_id,
        },
        status_code=410,
    )


def _past_end(after: int, last_id: int) -> RequestValidationError:
    return _bad_id(str(after), f"this run's last event is {last_id}: send an id it sent")


class EventStream(Response):
    """An SSE response that ends when its events do, or when its client leaves (noticed on
    every ASGI spec version, not only when a send fails)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], run_id: str) -> None:
        self.status_code = 200
        self.background = None
        self.body = b""
        self._events = events
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (RUN_ID_HEADER, run_id.encode()),
            (POLICY_HEADER, b"continue"),
        ]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async with anyio.create_task_group() as tg:

            async def listen() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(listen)
            async with aclosing(self._events) as events:
                async for chunk in events:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


async def _local(stream: RunStream, after: int) -> AsyncGenerator[bytes, None]:
    sent = after
    while True:
        try:
            events = stream.read(sent)
        except StreamGap as gap:
            yield fell_behind(gap, sent)
            return
        if events:
            sent += len(events)
            yield b"".join(events)
        elif stream.ended:
            return
        else:
            with anyio.move_on_after(PING_S) as idle:
                await stream.wait(sent)
            if idle.cancelled_caught:
                yield PING


class _Remote:
    """Follows a run's log that another worker writes, through the backend."""

    def __init__(
        self, registry: RunRegistry, backend: StreamBackend, key: SessionKey, run_id: str
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.key = key
        self.run_id = run_id

    async def events(self, after: int, page: StreamPage) -> AsyncGenerator[bytes, None]:
        sent = after
        last_out = time.monotonic()
        unlisted = 0
        next_page: StreamPage | None = page
        while True:
            if next_page is not None:
                if next_page.events:
                    first = next_page.events[0][0]
                    if first != sent + 1:
                        yield fell_behind(StreamGap(first), sent)
                        return
                    sent = next_page.events[-1][0]
                    last_out = time.monotonic()
                    unlisted = 0
                    yield b"".join(data for _, data in next_page.events)
                if next_page.ended:
                    return
                if not next_page.events and not await self._alive():
                    unlisted += 1
                    if unlisted >= LOST_CHECKS:
                        yield _event("error", self._lost(sent))
                        return
            if time.monotonic() - last_out >= PING_S:
                last_out = time.monotonic()
                yield PING
            scope = anyio.CancelScope()
            streams = self.registry.streams
            if streams.closing.is_set():
                scope.cancel()
            streams.followers.add(scope)
            try:
                with scope:
                    next_page = await self.backend.read_events(
                        self.key, self.run_id, sent, REMOTE_WAIT_S
                    )
            except BackendUnavailable:
                next_page = None
                await anyio.sleep(RETRY_S)
            finally:
                streams.followers.discard(scope)
            if scope.cancel_called:
                reason = "This server is shutting down: rejoin through another one."
                yield _event("reconnect", {"reason": reason, "lastEventId": sent}, 1000)
                return

    async def _alive(self) -> bool:
        """Whether a worker still lists the run (unknown, while the backend is down: yes)."""
        runs, error = await self.registry.runs_everywhere(self.key)
        return error is not None or any(r.run_id == self.run_id for r in runs)

    def _lost(self, sent: int) -> dict[str, Any]:
        return {
            "error": f"The worker holding run {self.run_id} stopped without ending its stream "
            "(it crashed or was killed); the session keeps the events it stored.",
            "lastEventId": sent,
        }


def build_rejoin_router(registry: RunRegistry) -> APIRouter:
    router = APIRouter(tags=["adk-cancel"], route_class=_Route)

    @router.get(
        EVENTS_PATH,
        status_code=200,
        response_class=EventStream,
        responses=_RESPONSES,
        summary="Replay and follow a run's event stream (SSE), through any worker",
    )
    async def follow_run_events(
        app_name: str,
        user_id: str,
        session_id: str,
        run_id: str,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        last_event_id: Annotated[
            str | None,
            Query(description="The id of the last event the client has (header wins)."),
        ] = None,
    ) -> Response:
        key = SessionKey(app_name, user_id, session_id)
        after = _after(last_event_id_header, last_event_id)
        stream = registry.streams.get(key, run_id)
        if stream is not None:
            if after > stream.last_id:
                raise _past_end(after, stream.last_id)
            if after < stream.first_id - 1:
                return _dropped(run_id, after, stream.first_id)
            if stream.ended and after == stream.last_id:
                return Response(status_code=204)
            return EventStream(_local(stream, after), run_id)
        for run in registry.runs_here(key):
            if run.run_id == run_id:
                return _not_kept(run_id, run.route)
        backend = registry.backend if isinstance(registry.backend, StreamBackend) else None
        page = None
        if backend is not None:
            try:
                await registry.start()
                page = await backend.read_events(key, run_id, after, 0)
            except BackendUnavailable as exc:
                raise _unavailable(exc) from exc
        if page is None or not page.found:
            runs, error = await registry.runs_everywhere(key)
            listed = next((r for r in runs if r.run_id == run_id), None)
            if listed is None:
                if error is not None:
                    raise _unavailable(error)
                return _gone(key, run_id, registry.options.stream_keep_s)
            if backend is None or listed.route != "run_sse" or listed.on_disconnect != "continue":
                return _not_kept(run_id, listed.route)
            page = StreamPage(found=True)  # it has sent no event yet
        last_id = page.last_id if page.last_id is not None else 0
        if page.ended and after > last_id:
            raise _past_end(after, last_id)
        first_id = page.events[0][0] if page.events else page.first_id
        if first_id is not None and after < first_id - 1:
            return _dropped(run_id, after, first_id)
        if page.ended and not page.events:
            return Response(status_code=204)
        assert backend is not None  # a page was read through it
        remote = _Remote(registry, backend, key, run_id)
        return EventStream(remote.events(after, page), run_id)

    return router
