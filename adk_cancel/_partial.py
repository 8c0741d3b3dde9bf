"""Keep what the user saw: after an interrupt, the text a run had streamed is stored.

ADK stores only complete model responses. A run stopped mid-answer leaves the session with
the user's message and ADK's seal (an empty ``INVOCATION_ABORTED`` event), while its client
showed "Once upon a time, in a land far": a reload shows nothing, and the model's next turn
does not know what it said. So, for a cancel with ``action="interrupt"`` (the default, and
the ``keep_partial`` option on), the text streamed since the run's last complete event is
stored as one model event, ``interrupted=True``, with the cancel in ``custom_metadata``
(``{"adk_cancel": {"interrupted": true, "reason": ..., "cause": ...}}``), just before the
seal, so the history reads: message, the words seen, the seal. A rollback removes it with
the rest, so nothing is written then.

What was streamed comes from what the client got: on ``/run_sse`` and ``/run_live`` an output
tap reads each event sent (``"partial": true`` events add their text; any other event with
content, or the end of the model's turn, starts afresh); on ``/run``, whose client gets
nothing until the end, the plugin feeds the events the model streamed inside the run.

| the run stopped by              | when the text is written                               |
|---------------------------------|--------------------------------------------------------|
| ADK's abort (it seals)          | from the plugin's ``on_event_callback``, which sees the |
|                                 | seal before ADK appends it                              |
| force, an error, ``/run_live``  | after the run ended, before the session is repaired     |
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
from google.adk.events.event import Event
from google.genai import types

from ._registry import RunEntry

if TYPE_CHECKING:
    from google.adk.agents.invocation_context import InvocationContext

logger = logging.getLogger("adk_cancel")

Message = MutableMapping[str, Any]

METADATA_KEY = "adk_cancel"
"""Key of adk-cancel's entry in a kept event's ``custom_metadata``."""

ABORTED_CODE = "INVOCATION_ABORTED"
RETRY_DELAYS_S = (0.0, 0.02, 0.1)


_PARTIAL = b'"partial":true'
_CONTENT = b'"content"'


class StreamedText:
    """The text a run has streamed since its last complete event (one author's).

    A tap runs on every streamed event, so it only sorts bytes: a partial event is kept as
    it was sent, and parsed only if its text is ever wanted (at a cancel); another event is
    parsed only if it may carry content (which starts the text afresh).
    """

    __slots__ = ("_events", "_pending", "_sent", "written")

    def __init__(self) -> None:
        # Both made on their first event: a run waiting in a tool holds neither.
        self._sent: list[bytes | str] | None = None
        """The partial events sent since the last complete one, as JSON."""
        self._events: list[Event] | None = None
        """The same, as ADK events (``/run``'s feed)."""
        self.written = False
        self._pending = b""

    def kept(self) -> tuple[str, str | None, str | None]:
        """(text, author, branch) of the streamed text; the last author's, if it changed."""
        chunks: list[str] = []
        author = branch = None
        for who, where, texts in self._parsed():
            if not texts:
                continue
            if chunks and who != author:
                chunks.clear()
            author, branch = who, where
            chunks.extend(texts)
        return "".join(chunks), author, branch

    def _parsed(self) -> list[tuple[str | None, str | None, list[str]]]:
        out: list[tuple[str | None, str | None, list[str]]] = [
            (e.author, e.branch, [p.text for p in _parts(e) if p.text and not p.thought])
            for e in self._events or ()
        ]
        for raw in self._sent or ():
            if isinstance(raw, bytes) and raw.startswith(b"data: "):
                raw = raw[6:]
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            content = event.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            texts = [
                p["text"]
                for p in (parts if isinstance(parts, list) else ())
                if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
            ]
            author, branch = event.get("author"), event.get("branch")
            out.append(
                (
                    author if isinstance(author, str) else None,
                    branch if isinstance(branch, str) else None,
                    texts,
                )
            )
        return out

    # -- feeds -----------------------------------------------------------------------------

    def tap(self, message: Message) -> None:
        """An output tap: every body chunk or websocket message the client gets."""
        kind = message["type"]
        if kind == "http.response.body":
            body: bytes = message.get("body", b"")
            if (
                not self._pending
                and body.startswith(b"data: ")
                and body.find(b"\n") == len(body) - 2
                and body[-1:] == b"\n"
                and body.find(_PARTIAL) != -1
            ):
                # ADK's usual chunk: one whole partial event (one line, then the blank one),
                # kept as sent ("data: " included). Sorted here, not by ``_sse``, and with
                # ``find``, not ``in`` (which first tries the pattern as an int, raising
                # and clearing a TypeError): this runs on every streamed event.
                self._keep(body)
                return
            self._sse(body)
        elif kind == "websocket.send":
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data:
                self._sort(data if isinstance(data, bytes) else data.encode())

    def event(self, event: Event) -> None:
        """An ADK event as the runner yields it (``/run``: nothing reaches the client)."""
        if event.partial:
            if self._events is None:
                self._events = []
            self._events.append(event)
        elif _parts(event) or event.turn_complete:
            self._events = None

    def _sse(self, body: bytes) -> None:
        # Anything but one whole partial event (``tap`` keeps those): split into events, a
        # second event in a chunk being a complete one, with content.
        data = self._pending + body if self._pending else body
        *blocks, self._pending = data.split(b"\n\n")
        for block in blocks:
            if block.startswith(b"data: "):
                self._sort(block[6:])  # ADK's one-line events; other blocks are ours

    def _sort(self, event: bytes) -> None:
        if event.find(_PARTIAL) != -1:
            self._keep(event)
        elif event.find(_CONTENT) != -1 or event.find(b'"turnComplete":true') != -1:
            try:
                parsed = json.loads(event)
            except ValueError:
                return
            content = parsed.get("content") if isinstance(parsed, dict) else None
            if (isinstance(content, dict) and content.get("parts")) or (
                isinstance(parsed, dict) and parsed.get("turnComplete") is True
            ):
                self._sent = None

    def _keep(self, sent: bytes | str) -> None:
        if self._sent is None:
            self._sent = []
        self._sent.append(sent)


def _parts(event: Event) -> list[types.Part]:
    return list(event.content.parts or []) if event.content is not None else []


def watch(entry: RunEntry) -> None:
    """Follow what ``entry``'s client is streamed (a no-op when ``keep_partial`` is off)."""
    if not entry.registry.options.keep_partial:
        return
    stream = entry.streamed_text = StreamedText()
    if entry.route != "run":
        entry.output_taps.append(stream.tap)


def _wanted(entry: RunEntry) -> StreamedText | None:
    """The run's streamed text, if it is to be kept now."""
    stream = entry.streamed_text
    order = entry.cancel_order
    if stream is None or stream.written or order is None or order.action != "interrupt":
        return None
    return stream if stream.kept()[0] else None


def kept_event(entry: RunEntry, stream: StreamedText, before: Event | None = None) -> Event:
    """The event that keeps the streamed text (``before``: the seal it must precede)."""
    order = entry.cancel_order
    assert order is not None and entry.invocation_id is not None
    ic = entry.invocation_context
    fallback = getattr(getattr(ic, "agent", None), "name", None) or "model"
    text, author, branch = stream.kept()
    # Database stores read events back in timestamp order, and ADK created its seal before
    # this one: dated a microsecond before the seal, it reads back where it was written.
    event = Event(
        invocation_id=entry.invocation_id,
        author=author or fallback,
        branch=branch,
        content=types.Content(role="model", parts=[types.Part(text=text)]),
        interrupted=True,
        custom_metadata={
            METADATA_KEY: {
                "interrupted": True,
                "reason": order.reason,
                "cause": order.cause,
                "run_id": entry.run_id,
            }
        },
    )
    if before is not None:
        event.timestamp = min(event.timestamp, before.timestamp - 1e-6)
    return event


async def on_run_event(entry: RunEntry, ic: InvocationContext, event: Event) -> None:
    """From the plugin's ``on_event_callback``, for the run's own invocation: feed ``/run``'s
    text, and write the kept text just before ADK appends its seal."""
    stream = entry.streamed_text
    if stream is None:
        return
    if entry.route == "run" and event.error_code != ABORTED_CODE:
        stream.event(event)
        return
    if event.error_code != ABORTED_CODE or (kept := _wanted(entry)) is None:
        return
    try:
        event_kept = kept_event(entry, kept, before=event)
        await ic.session_service.append_event(session=ic.session, event=event_kept)
        kept.written = True
    except Exception:
        # A stale session object (a shared store): the run's end writes it from a fresh read.
        logger.debug("Could not keep the streamed text of run %s before its seal", entry.run_id)


async def keep(entry: RunEntry) -> None:
    """After the run ended: write the kept text if ADK's seal did not carry it in (a forced
    or live run, or a run that failed on its way out)."""
    stream = _wanted(entry)
    service = entry.session_service
    if stream is None or service is None or not entry.invocation_id:
        return
    key = entry.key
    for delay in RETRY_DELAYS_S:
        await anyio.sleep(delay)
        try:
            session = await service.get_session(
                app_name=key.app_name, user_id=key.user_id, session_id=key.session_id
            )
            if session is None:
                return
            await service.append_event(session=session, event=kept_event(entry, stream))
            stream.written = True
            return
        except Exception:
            logger.debug("Keeping the streamed text of run %s failed; retrying", entry.run_id)
    logger.warning(
        "adk-cancel: could not store the text run %s had streamed before it was stopped",
        entry.run_id,
    )
