"""What the client of a cancelled run gets, per route: the part of the answer adk-cancel
writes itself, and the record of what the app already sent, so nothing is sent twice.

| route       | the run was cancelled ...     | the client gets                                 |
|-------------|-------------------------------|-------------------------------------------------|
| ``/run``    | before anything was sent      | 200, ``[cancelled event]``, the cancel headers   |
| ``/run``    | and ADK answered itself       | ADK's events, with the cancel headers            |
| ``/run_sse``| before anything was sent      | 200, a stream of one ``event: cancelled``        |
| ``/run_sse``| mid-stream                    | the stream so far, then ``event: cancelled``     |
| ``/run_live``| any time                     | close code 4000, reason ``cancelled: <reason>`` |
| any         | after the client left         | nothing                                          |
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from ._registry import RunEntry

logger = logging.getLogger("adk_cancel")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

WS_CLOSE_CANCELLED = 4000
"""WebSocket close code sent to a /run_live client whose run was cancelled."""

CANCEL_HEADER = b"x-adk-cancel"
"""Response header on a /run or /run_sse response whose run was cancelled."""

REASON_HEADER = b"x-adk-cancel-reason"
"""Beside it: why (percent-encoded where not printable ASCII)."""

_ADK_ERROR_CHUNK = b'data: {"error": '
"""How ADK's /run_sse reports an exception of the run, as its last chunk."""


def cancelled_event(entry: RunEntry) -> dict[str, Any]:
    """The final event a cancelled /run_sse stream (or a forced /run) carries."""
    reason = entry.cancel_reason or "cancelled"
    return {
        "id": uuid.uuid4().hex,
        "author": "adk-cancel",
        "invocationId": entry.invocation_id,
        "errorCode": "CANCELLED",
        "errorMessage": f"Run cancelled: {reason}",
        "timestamp": time.time(),
        "cancelled": {
            "reason": reason,
            "invocationId": entry.invocation_id,
            "runId": entry.run_id,
            "stoppedBy": entry.stopped_by or entry.stop_kind(),
            "cause": entry.cancel_order.cause if entry.cancel_order is not None else None,
        },
    }


def _cancel_headers(entry: RunEntry) -> list[tuple[bytes, bytes]]:
    reason = quote(entry.cancel_reason or "cancelled", safe=" !\"#$&'()*+,/:;<=>?@[]^`{|}~")
    return [(CANCEL_HEADER, b"cancelled"), (REASON_HEADER, reason.encode("ascii"))]


def _sse_chunk(entry: RunEntry) -> bytes:
    return f"event: cancelled\ndata: {json.dumps(cancelled_event(entry))}\n\n".encode()


def json_response(status: int, payload: Any, *extra: tuple[bytes, bytes]) -> list[Message]:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


class Response:
    """Per-request record of what the app has sent, so adk-cancel never sends twice."""

    __slots__ = (
        "_send",
        "cancel_event_sent",
        "ended",
        "entry",
        "last",
        "sized",
        "sse",
        "started",
        "ws_closed",
    )

    def __init__(self, entry: RunEntry, send: Send) -> None:
        self.entry = entry
        self._send = send
        self.started = False
        self.ended = False
        self.sse = False
        self.sized = False
        """The app's answer declared its Content-Length: nothing but all of it may follow."""
        self.cancel_event_sent = False
        self.ws_closed = False
        self.last: Message | None = None
        """The answer's last message, held until the run is recorded and unlisted
        (:meth:`send_last`): a client that acts on its answer finds the run ended."""

    def send(self, message: Message) -> Awaitable[None]:
        entry = self.entry
        if (
            message.get("more_body", False)
            and entry.cancel_order is None
            and message["type"] == "http.response.body"
        ):
            # A streamed event of a run going on: this path is taken a thousand times a
            # run, the other a few times. What the caller awaits is the next send's own
            # awaitable, not a coroutine of ours around it (a frame per event).
            for tap in entry.output_taps:
                tap(message)
            return self._send(message)
        return self._send_other(message)

    async def _send_other(self, message: Message) -> None:
        entry = self.entry
        kind = message["type"]
        hold = False
        if kind == "http.response.start":
            self.started = True
            entry.http_status = message.get("status")
            headers = list(message.get("headers", []))
            self.sse = any(
                k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                for k, v in headers
            )
            self.sized = not self.sse and any(k.lower() == b"content-length" for k, _ in headers)
            if entry.cancel_reason is not None:
                message = {**message, "headers": [*headers, *_cancel_headers(entry)]}
            elif not self.sse:
                # A JSON answer (/run's events, or ADK's error) starts once ADK has all of
                # it: the run is over, and its client is not told of a cancel that comes now
                # (these headers have none), so such a cancel is too late. Since google-adk
                # 2.14 the body follows the headers a task hop later (its tracing middleware
                # is a BaseHTTPMiddleware): a cancel landed in between and was reported as an
                # abort the client never heard of.
                entry.ended = True
        elif kind == "http.response.body":
            cancelled = entry.cancel_order is not None  # once per streamed event: no property
            if cancelled and self.sse and message.get("body", b"").startswith(_ADK_ERROR_CHUNK):
                # ADK's stream failed on its way out of the cancel (its seal write hit a
                # stale session): the run is stopped all the same, and the session gets
                # repaired; the client's answer is the cancel, not ADK's internal error.
                entry.failed = True
                logger.warning(
                    "Run %s (session %s) reported an error after its cancel; repairing the "
                    "session: %s",
                    entry.invocation_id or entry.run_id,
                    entry.key.session_id,
                    message["body"][6:].decode(errors="replace").strip()[:500],
                )
                message = {**message, "body": b""}
            if not message.get("more_body", False):
                if self.sse and cancelled and not self.cancel_event_sent:
                    self.cancel_event_sent = True
                    await self._send(
                        {"type": "http.response.body", "body": _sse_chunk(entry), "more_body": True}
                    )
                self.ended = True
                if not cancelled:
                    entry.ended = True
                hold = True
        elif kind == "websocket.close" and entry.cancel_order is not None:
            # ADK closing a cancelled live run itself: with 1000 once its event stream ended
            # on the abort (google-adk 2.15 closes as soon as either of its live tasks ends;
            # 2.13 waited for both, so the force came first), with 1011 when its tasks failed
            # on the way out (a stale session write). The client's close is the cancel's 4000,
            # sent once the session is repaired (``finish_ws``): ADK's is held back.
            logger.debug(
                "Live run %s: ADK's close %s (%r) replaced by the cancel's",
                entry.run_id,
                message.get("code"),
                message.get("reason"),
            )
            return
        elif kind in ("websocket.close", "websocket.http.response.start"):
            self.ws_closed = True
        for tap in entry.output_taps:
            tap(message)
        if hold:
            self.last = message  # sent by send_last, once the run is recorded
            return
        await self._send(message)

    async def send_last(self) -> None:
        """Send the answer's last message, held since the app (or :meth:`finish_http`) gave
        it: the run is recorded and unlisted by now."""
        if self.last is not None:
            last, self.last = self.last, None
            await self._send(last)

    async def fail_http(self, exc: BaseException) -> None:
        """The app raised before answering: say what went wrong, as JSON (Starlette would
        answer a bare "Internal Server Error")."""
        if self.started or (self.entry.disconnected and not self.entry.detached):
            await self.send_last()  # an answer the app had completed still goes out whole
            return
        # The task group the app ran in wraps its error in an exception group.
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        detail = f"{type(exc).__name__}: {exc}"
        for message in json_response(500, {"detail": detail}):
            await self._send(message)
        self.started = self.ended = True

    async def finish_http(self) -> None:
        """Complete the response of a run that was cancelled by force (its last message is
        held for :meth:`send_last`)."""
        entry = self.entry
        if self.ended or (entry.disconnected and not entry.detached):
            return  # a detached run's answer still goes into its log, for its followers
        if not self.started:
            if entry.route == "run_sse":
                body, ctype = _sse_chunk(entry), b"text/event-stream"
            else:
                body, ctype = json.dumps([cancelled_event(entry)]).encode(), b"application/json"
            self.cancel_event_sent = entry.route == "run_sse"
            await self._send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", ctype),
                        (b"content-length", str(len(body)).encode()),
                        *_cancel_headers(entry),
                    ],
                }
            )
            self.last = {"type": "http.response.body", "body": body}
        elif self.sized:
            # The app was stopped between its headers and the end of a body whose length
            # they declared: an empty end would be a protocol error (h11: "Too little data
            # for declared Content-Length"), and the bytes it lacks are the app's. Leaving
            # the response unfinished makes the server close the connection, which the
            # client reads as an incomplete answer.
            logger.warning(
                "Run %s (session %s): its answer was cut after its headers; closing the connection",
                entry.invocation_id or entry.run_id,
                entry.key.session_id,
            )
            return
        else:
            body = b""
            if self.sse and not self.cancel_event_sent:
                self.cancel_event_sent = True
                body = _sse_chunk(entry)
            self.last = {"type": "http.response.body", "body": body}
        self.ended = True

    async def finish_ws(self) -> None:
        entry = self.entry
        if self.ws_closed or entry.disconnected:
            return
        reason = f"cancelled: {entry.cancel_reason}".encode()[:120].decode(errors="ignore")
        await self._send({"type": "websocket.close", "code": WS_CLOSE_CANCELLED, "reason": reason})
        self.ws_closed = True
