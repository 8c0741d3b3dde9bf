"""A ``/run_live`` under a busy policy: accepted early when it must wait, refused with an
HTTP answer, and told which runs it replaced.

A live run that has to wait for its session (``enqueue``, or ``interrupt`` while the active
run stops) is accepted at once rather than left in its handshake (many clients give up on a
handshake after 10 s), so that its client leaving is noticed (a cancel, and nothing is left
behind) and what it sends meanwhile is kept. When the gate admits it, ADK's handler runs as
usual: its ``websocket.accept`` is swallowed and it receives the client's ``connect`` and
then every message in order. A refused one gets an HTTP answer to its handshake (the ASGI
``websocket.http.response`` extension, which uvicorn has) with the JSON body a ``/run`` gets,
or else a close with code 1008 (policy violation) and the reason. Once ADK has accepted, a
run that replaced others first sends a message naming them (``busy.replaced_message``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from ._busy import replaced_message
from ._order import CancelOrder
from ._registry import RunEntry
from ._response import json_response

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WS_CLOSE_POLICY = 1008
"""Close code of a refused live run on a server without HTTP answers to a handshake."""


class EarlyAccept:
    """The websocket of one live run, between the client and the busy gate and ADK."""

    def __init__(self, entry: RunEntry, scope: Any, receive: Receive, send: Send) -> None:
        self.entry = entry
        self.scope = scope
        self._receive = receive
        self._send = send
        self.accepted = False
        """Accepted by adk-cancel, before ADK's handler ran."""
        self._connect: Message | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._pumping = anyio.Event()
        self._announced = False

    @staticmethod
    async def deny(scope: Any, send: Send, status: int, payload: dict[str, Any]) -> None:
        """Refuse the handshake: an HTTP answer where the server can send one (the ASGI
        denial-response extension), else close code 1008 with the detail."""
        if "websocket.http.response" in (scope.get("extensions") or {}):
            for message in json_response(status, payload):
                await send({**message, "type": "websocket." + message["type"]})
            return
        reason = str(payload.get("detail", ""))
        await send(
            {
                "type": "websocket.close",
                "code": WS_CLOSE_POLICY,
                "reason": reason.encode()[:120].decode(errors="ignore"),
            }
        )

    async def refuse(self, status: int, payload: dict[str, Any]) -> None:
        if not self.accepted:
            await self.deny(self.scope, self._send, status, payload)
            return
        await self._send(
            {"type": "websocket.send", "text": json.dumps({"error": payload, "status": status})}
        )
        await self._send({"type": "websocket.close", "code": WS_CLOSE_POLICY})

    async def accept(self) -> None:
        """The run must wait: accept now, and keep what the client sends."""
        if self.accepted:
            return
        try:
            message = await self._receive()
            if message["type"] == "websocket.connect":
                await self._send({"type": "websocket.accept"})
                self._connect = message
                self.accepted = True
            else:
                self._inbox.put_nowait(message)
        except OSError:
            self._inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})
        if not self.accepted:
            self._left()
        self._pumping.set()

    async def listen(self) -> None:
        """Beside the run (in its task group): once accepted early, read the client."""
        await self._pumping.wait()
        while self.accepted:
            message = await self._receive()
            self._inbox.put_nowait(message)
            if message["type"] == "websocket.disconnect":
                self._left()
                return

    def _left(self) -> None:
        self.entry.disconnected = True
        self.entry.request_cancel(
            CancelOrder(self.entry.key, "client disconnected", cause="disconnect")
        )

    async def receive(self) -> Message:
        """ADK's receive: the client's connect first, then its messages in order."""
        if not self._pumping.is_set():
            return await self._receive()
        if self._connect is not None:
            message, self._connect = self._connect, None
            return message
        return await self._inbox.get()

    async def send(self, message: Message) -> None:
        """ADK's send, below the cancel response's bookkeeping."""
        if message["type"] == "websocket.accept":
            if not self.accepted:
                await self._send(message)
            if self.entry.replaced and not self._announced:
                self._announced = True
                text = json.dumps(replaced_message(self.entry))
                await self._send({"type": "websocket.send", "text": text})
            return
        await self._send(message)
