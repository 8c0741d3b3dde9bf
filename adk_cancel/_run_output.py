"""What a ``/run`` or ``/run_sse`` client is sent on its way out: the run's id and disconnect
policy as headers, an ``id:`` on every SSE event, and, for a run that may outlive its client,
the run's event log between ADK and the client.

The ids: each event ADK's ``/run_sse`` writes (one body chunk per event) goes out as
``id: N`` + the chunk, N counting from 1, bytes in and bytes out (nothing is decoded). A
client that lost the stream rejoins with ``Last-Event-ID: N`` and gets N+1 on.

Disconnect policy ``cancel`` (the default): nothing is kept; the chunk goes straight to the
client, as before. Policy ``continue``: the run must not depend on its client any more, so
ADK's chunks go into the run's log (``_stream.py``) and never wait on the network; a
forwarder task sends the log to the client, as a follower would. A client that stops reading
without disconnecting (a phone that lost its network) therefore holds up nothing: ADK paces
its stream by its client's reads, which would stall the run until TCP gives up (many
minutes). Once the run has ended, its client gets ``STALL_S`` to read the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio

from ._stream import RunStream, StreamGap

if TYPE_CHECKING:
    from ._models import DisconnectPolicy
    from ._registry import RunEntry

logger = logging.getLogger("adk_cancel")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Scope = MutableMapping[str, Any]

POLICY_HEADER = b"x-adk-on-disconnect"
"""Request header choosing the disconnect policy; also on the response, saying which applied."""
RUN_ID_HEADER = b"x-adk-run-id"
"""Response header: the run's id, for ``GET .../runs/{run_id}/events``."""
STALL_S = 30.0
"""After the run: how long its ``continue`` client may take to read the rest of its answer
before it is given up on (its request then ends; the log stays for a rejoin)."""
SHUTDOWN_STALL_S = 2.0
"""The same, while the server shuts down (it waits for every open connection)."""
ANSWER_CHARS = 2000
"""How much of a non-SSE answer (an error) a rejoinable run's log repeats."""


def disconnect_policy(scope: Scope, default: DisconnectPolicy) -> DisconnectPolicy:
    """The request's ``X-ADK-On-Disconnect`` header, or ``default``; raises ``ValueError``."""
    for name, value in scope.get("headers") or ():
        if name == POLICY_HEADER:
            policy: str = value.decode("latin-1").strip().lower()
            if policy == "cancel":
                return "cancel"
            if policy == "continue":
                return "continue"
            raise ValueError(
                "X-ADK-On-Disconnect must be 'cancel' (the run stops when its client leaves) "
                f"or 'continue' (it goes on, and can be rejoined), not {policy[:80]!r}"
            )
    return default


def fell_behind(error: StreamGap, sent: int) -> bytes:
    """The last event of a stream whose reader fell behind the log's bounds."""
    detail = {
        "error": f"Events {sent + 1} to {error.first_id - 1} of this run dropped out of its "
        "log (it outgrew stream_max_events or stream_max_bytes) before this client read them.",
        "lastEventId": sent,
        "firstKeptId": error.first_id,
    }
    return b"event: error\ndata: " + json.dumps(detail).encode() + b"\n\n"


class RunOutput:
    """Per request: what the app sends the run's client, on its way to the server."""

    __slots__ = (
        "_answer",
        "_done",
        "_last_id",
        "_send",
        "_sent",
        "_stalled",
        "_status",
        "entry",
        "sse",
        "stream",
    )

    def __init__(self, entry: RunEntry, send: Send, stream: RunStream | None) -> None:
        self.entry = entry
        self.stream = stream
        self._send = send
        self.sse = False
        self._last_id = 0  # without a log: the last id sent
        self._sent = 0  # with a log: the last id the forwarder sent
        self._done = False
        self._stalled = False
        self._status = 0
        self._answer = b""

    @classmethod
    def open(cls, entry: RunEntry, send: Send, policy: DisconnectPolicy) -> RunOutput:
        """The output of a run; a ``continue`` /run_sse run gets a log."""
        stream = None
        if policy != entry.on_disconnect:
            entry.on_disconnect = policy
            entry.registry.backend.announce(entry.info())
        if policy == "continue" and entry.route == "run_sse":
            stream = entry.registry.streams.open(entry.key, entry.run_id)
        return cls(entry, send, stream)

    @property
    def forwards_stream(self) -> bool:
        """Whether the app's stream goes into the run's log, the forwarder sending it on."""
        return self.stream is not None and self.sse

    def send(self, message: Message) -> Awaitable[None]:
        if (
            self.stream is None
            and self.sse
            and message["type"] == "http.response.body"
            and not self.entry.disconnected
        ):
            # A /run_sse event under policy ``cancel``: an id, and the next send's own
            # awaitable (no coroutine of ours per event).
            body: bytes = message.get("body", b"")
            if body:
                self._last_id += 1
                message = {
                    "type": "http.response.body",
                    "body": b"id: %d\n" % self._last_id + body,  # with_id, inlined
                    "more_body": message.get("more_body", False),
                }
            return self._send(message)
        return self._send_other(message)

    async def _send_other(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            stream = self.stream
            if self.sse and stream is not None:
                body: bytes = message.get("body", b"")
                if body and not stream.ended:
                    if stream.key is not self.entry.key:
                        stream.key = self.entry.key  # the session ADK resolved
                    stream.append(body)
                if not message.get("more_body", False):
                    stream.end()
                return  # the forwarder sends it
            if self.sse:
                return  # ``send`` sends the others: the client left
            if stream is not None:
                self._keep_answer(message, stream)
            if self.entry.disconnected:
                return  # nobody to send it to (uvicorn would drop it too)
            await self._send(message)
        elif kind == "http.response.start":
            await self._start(message)
        else:
            await self._send(message)

    async def _start(self, message: Message) -> None:
        headers = list(message.get("headers") or ())
        self.sse = any(
            k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers
        )
        if self.sse:
            # The ids make the body longer than any length the app computed.
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((RUN_ID_HEADER, self.entry.run_id.encode()))
        headers.append((POLICY_HEADER, self.entry.on_disconnect.encode()))
        self._status = int(message.get("status", 200))
        if not self.entry.disconnected:
            await self._send({**message, "headers": headers})

    def _keep_answer(self, message: Message, stream: RunStream) -> None:
        """A rejoinable run answered with something else than a stream (an error): its
        followers get it as an ``event: error``."""
        if len(self._answer) < ANSWER_CHARS:
            self._answer += message.get("body", b"")[:ANSWER_CHARS]
        if message.get("more_body", False) or stream.ended:
            return
        text = self._answer.decode(errors="replace")
        try:
            detail: Any = json.loads(text)
        except ValueError:
            detail = text
        answer = {"error": f"The run was answered with HTTP {self._status}", "detail": detail}
        stream.append(b"event: error\ndata: " + json.dumps(answer).encode() + b"\n\n")
        stream.end()

    # -- the forwarder (policy continue) ---------------------------------------------------

    def with_forwarder(
        self, listen: Callable[[], Coroutine[Any, Any, None]]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """``listen`` (the middleware's disconnect listener), and beside it the forwarder."""
        if self.stream is None:
            return listen

        async def listen_and_forward() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward)
                await listen()
                tg.cancel_scope.cancel()  # the client left: nothing more to forward

        return listen_and_forward

    async def flush(self) -> None:
        """After the app: send the client what is left of the log, and end its response."""
        stream = self.stream
        if stream is None or self._done:
            return
        stream.end()  # if the app did not end it, it will not now
        closing = self.entry.registry.streams.closing.is_set()
        bound = SHUTDOWN_STALL_S if closing else STALL_S
        with anyio.move_on_after(bound) as scope:
            try:
                await self._forward()
            except OSError:
                return  # the client is gone
        if scope.cancelled_caught:
            self._stalled = True
            logger.info(
                "The client of run %s (session %s) has not read its answer's end for %.0f s: "
                "giving up on it (the run's events stay kept for a rejoin).",
                self.entry.run_id,
                self.entry.key.session_id,
                bound,
            )

    async def _forward(self) -> None:
        stream = self.stream
        assert stream is not None
        while not (self._done or self._stalled or self.entry.disconnected):
            try:
                events = stream.read(self._sent)
            except StreamGap as gap:
                await self._to_client(fell_behind(gap, self._sent), more=False)
                self._done = True
                return
            if (events or stream.ended) and not self.sse:
                # The app answered with something else than a stream (an error), or not at
                # all: its client got that answer directly.
                self._done = True
                return
            if events:
                count = len(events)
                await self._to_client(events[0] if count == 1 else b"".join(events), more=True)
                self._sent += count
            elif stream.ended:
                await self._to_client(b"", more=False)
                self._done = True
            else:
                await stream.wait(self._sent)

    async def _to_client(self, body: bytes, *, more: bool) -> None:
        # No timer per send (it would cost every event): a client that stops reading holds
        # up only this task, and the flush at the end is bounded.
        await self._send({"type": "http.response.body", "body": body, "more_body": more})
