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
import weakref
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


class StreamedText:
    """The text a run has streamed since its last complete event (one author's)."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.author: str | None = None
        self.branch: str | None = None
        self.written = False
        self._pending = b""

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    # -- feeds -----------------------------------------------------------------------------

    def tap(self, message: Message) -> None:
        """An output tap: every body chunk or websocket message the client gets."""
        kind = message["type"]
        if kind == "http.response.body":
            self._sse(message.get("body", b""))
        elif kind == "websocket.send":
            text = message.get("text")
            if text is None and message.get("bytes") is not None:
                text = message["bytes"].decode(errors="replace")
            if text:
                self._json(text)

    def event(self, event: Event) -> None:
        """An ADK event as the runner yields it (``/run``: nothing reaches the client)."""
        parts = event.content.parts if event.content is not None else None
        if event.partial:
            texts = [p.text for p in parts or () if p.text and not p.thought]
            self._add(event.author, event.branch, texts)
        elif parts or event.turn_complete:
            self._reset()

    def _sse(self, body: bytes) -> None:
        data = self._pending + body
        *blocks, self._pending = data.split(b"\n\n")
        for block in blocks:
            lines = [
                line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")
            ]
            if lines:
                self._json(b"\n".join(lines).decode(errors="replace"))

    def _json(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        content = event.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            parts = None
        if event.get("partial") is True:
            texts = [
                p["text"]
                for p in parts or ()
                if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
            ]
            author = event.get("author")
            branch = event.get("branch")
            self._add(
                author if isinstance(author, str) else None,
                branch if isinstance(branch, str) else None,
                texts,
            )
        elif parts or event.get("turnComplete") is True:
            self._reset()

    def _add(self, author: str | None, branch: str | None, texts: list[str]) -> None:
        if not texts:
            return
        if self.chunks and author != self.author:
            self._reset()
        self.author, self.branch = author, branch
        self.chunks.extend(texts)

    def _reset(self) -> None:
        self.chunks.clear()
        self.author = self.branch = None


_streams: weakref.WeakKeyDictionary[RunEntry, StreamedText] = weakref.WeakKeyDictionary()


def watch(entry: RunEntry) -> None:
    """Follow what ``entry``'s client is streamed (a no-op when ``keep_partial`` is off)."""
    if not entry.registry.options.keep_partial:
        return
    stream = _streams[entry] = StreamedText()
    if entry.route != "run":
        entry.output_taps.append(stream.tap)


def _wanted(entry: RunEntry) -> StreamedText | None:
    """The run's streamed text, if it is to be kept now."""
    stream = _streams.get(entry)
    order = entry.cancel_order
    if stream is None or stream.written or order is None or order.action != "interrupt":
        return None
    return stream if stream.text else None


def kept_event(entry: RunEntry, stream: StreamedText, before: Event | None = None) -> Event:
    """The event that keeps the streamed text (``before``: the seal it must precede)."""
    order = entry.cancel_order
    assert order is not None and entry.invocation_id is not None
    ic = entry.invocation_context
    fallback = getattr(getattr(ic, "agent", None), "name", None) or "model"
    # Database stores read events back in timestamp order, and ADK created its seal before
    # this one: dated a microsecond before the seal, it reads back where it was written.
    event = Event(
        invocation_id=entry.invocation_id,
        author=stream.author or fallback,
        branch=stream.branch,
        content=types.Content(role="model", parts=[types.Part(text=stream.text)]),
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
    stream = _streams.get(entry)
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
