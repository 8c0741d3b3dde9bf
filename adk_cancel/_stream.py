"""A run's event log: the SSE events its ``/run_sse`` client was sent, kept so that any client
can rejoin the stream (``GET .../runs/{run_id}/events``), on any worker.

Kept only for runs whose disconnect policy is ``continue``: only such a run can outlive its
client, so only its stream has anyone to rejoin it. With ``cancel`` (the default) the run ends
when its one client leaves; its events carry ids all the same, and a rejoin is answered 409.

Each entry is one event exactly as the client got it, its ``id: N`` line included (``N``
counts the run's events from 1), so a replay is the same bytes and nothing is encoded twice.
Bounds, per run: ``stream_max_events`` events and ``stream_max_bytes`` bytes (the newest event
is always kept, however large); beyond them the oldest events drop, and a rejoin from before
the oldest kept one is told so (``StreamGap``), never handed a stream with a hole in it. After
the run, the log stays ``stream_keep_s`` for late rejoins. With a backend that reaches other
workers (Redis), every change is also handed to it (``StreamWrite``), so a follower on another
worker reads the same events in the same order (``StreamPage``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio

from ._models import SessionKey

if TYPE_CHECKING:
    from ._options import CancelOptions


class _Run(Protocol):
    @property
    def run_id(self) -> str: ...


COMPACT_AT = 1024
"""Dropped entries are cut off the front of the list in batches of at least this many."""

UNFINISHED = (
    b'event: error\ndata: {"error": "The run ended without finishing its stream: see the '
    b'server log."}\n\n'
)
"""What followers get last when a run's request ended without completing its stream."""


def with_id(event_id: int, event: bytes) -> bytes:
    """An SSE event as sent: its ``id:`` line, then the event as the app wrote it."""
    return b"id: %d\n" % event_id + event


@dataclass(frozen=True)
class StreamWrite:
    """One change to a run's log, as a backend mirrors it to the other workers."""

    key: SessionKey
    run_id: str
    seq: int
    """The event's id; for the end marker, the last event's id + 1."""
    data: bytes
    """The SSE event as sent (``id:`` line included); empty for the end marker."""
    kept: int
    """How many events the log keeps once this write is in (the stream's ``MAXLEN``)."""
    end: bool = False
    keep_ms: int = 0
    """With ``end``: how long the log stays readable."""


@dataclass(frozen=True)
class StreamPage:
    """A read of a run's log held on another worker: its events after the reader's cursor."""

    events: tuple[tuple[int, bytes], ...] = ()
    """(id, SSE event) pairs, in order."""
    ended: bool = False
    """The end marker follows the events: the run's stream is complete."""
    found: bool = False
    """The log exists (it may have no events yet)."""
    first_id: int | None = None
    """The oldest event kept (only known on a read that did not wait)."""
    last_id: int | None = None
    """The newest event kept (only known on a read that did not wait)."""


class StreamGap(Exception):
    """The events a reader asked for have dropped out of the log (it outgrew its bounds)."""

    def __init__(self, first_id: int) -> None:
        super().__init__(f"the oldest event kept is {first_id}")
        self.first_id = first_id


class RunStream:
    """The log of one run. One writer (the run's request); any number of readers."""

    def __init__(
        self,
        key: SessionKey,
        run_id: str,
        *,
        max_events: int,
        max_bytes: int,
        keep_s: float,
        publish: Callable[[StreamWrite], None] | None = None,
        on_end: Callable[[RunStream], None] | None = None,
    ) -> None:
        self.key = key
        self.run_id = run_id
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.keep_s = keep_s
        self.last_id = 0
        self.ended = False
        self.expires_at: float | None = None
        """Monotonic time after which an ended log is forgotten."""
        self.dropped = 0
        self._items: list[bytes] = []
        self._head = 0  # index in _items of the oldest kept event
        self._base = 1  # id of _items[0]
        self._bytes = 0
        self._wake: asyncio.Event | None = None
        self._publish = publish
        self._on_end = on_end

    @property
    def first_id(self) -> int:
        """The oldest event kept (``last_id + 1`` while the log is empty)."""
        return self._base + self._head

    @property
    def kept(self) -> int:
        return self.last_id - self.first_id + 1

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    def append(self, event: bytes) -> bytes:
        """Add the next event; returns it as kept and sent, its ``id:`` line first."""
        data = with_id(self.last_id + 1, event)
        self._items.append(data)
        self._bytes += len(data)
        self.last_id += 1
        if self.kept > self.max_events or self._bytes > self.max_bytes:
            self._drop_oldest()
        if self._publish is not None:
            self._publish(StreamWrite(self.key, self.run_id, self.last_id, data, self.kept))
        if self._wake is not None:
            self._wake.set()
            self._wake = None
        return data

    def _drop_oldest(self) -> None:
        items = self._items
        while self.kept > 1 and (self.kept > self.max_events or self._bytes > self.max_bytes):
            self._bytes -= len(items[self._head])
            items[self._head] = b""
            self._head += 1
            self.dropped += 1
        if self._head >= COMPACT_AT and self._head * 2 >= len(items):
            del items[: self._head]
            self._base += self._head
            self._head = 0

    def end(self) -> None:
        """The run's stream is complete: readers get what is left, then the end."""
        if self.ended:
            return
        self.ended = True
        self.expires_at = time.monotonic() + self.keep_s
        if self._publish is not None:
            self._publish(
                StreamWrite(
                    self.key,
                    self.run_id,
                    self.last_id + 1,
                    b"",
                    self.kept,
                    end=True,
                    keep_ms=max(1, int(self.keep_s * 1000)),
                )
            )
        if self._wake is not None:
            self._wake.set()
            self._wake = None
        if self._on_end is not None:
            self._on_end(self)

    def read(self, after: int) -> list[bytes]:
        """The events after id ``after``, in order; raises ``StreamGap`` if some of them have
        dropped out."""
        first = self.first_id
        if after < first - 1:
            raise StreamGap(first)
        start = self._head + (after + 1 - first)
        return self._items[start:] if start < len(self._items) else []

    async def wait(self, after: int) -> None:
        """Until there is an event after id ``after``, or the log has ended."""
        while self.last_id <= after and not self.ended:
            if self._wake is None:
                self._wake = asyncio.Event()
            await self._wake.wait()


class RunStreams:
    """This process's run logs, by run id: those of active runs, and of runs that ended less
    than ``stream_keep_s`` ago."""

    def __init__(
        self, options: CancelOptions, publish: Callable[[StreamWrite], None] | None = None
    ) -> None:
        self.options = options
        self.publish = publish
        """Hands each change to the backend (None: no other worker to tell, as memory://)."""
        self._streams: dict[str, RunStream] = {}
        self._ended: collections.deque[RunStream] = collections.deque()
        self.closing = asyncio.Event()
        """Set when the server shuts down: followers of other workers' runs let go."""
        self.followers: set[anyio.CancelScope] = set()
        """The reads of followers of other workers' runs, cancelled by ``close``."""

    def close(self) -> None:
        """The server is shutting down: followers of other workers' runs stop (they rejoin
        through another worker); those of runs here follow them to their end."""
        self.closing.set()
        for scope in list(self.followers):
            scope.cancel()

    def open(self, key: SessionKey, run_id: str) -> RunStream:
        self._purge()
        stream = RunStream(
            key,
            run_id,
            max_events=self.options.stream_max_events,
            max_bytes=self.options.stream_max_bytes,
            keep_s=self.options.stream_keep_s,
            publish=self.publish,
            on_end=self._ended.append,
        )
        self._streams[run_id] = stream
        return stream

    def get(self, key: SessionKey, run_id: str) -> RunStream | None:
        """The run's log, if this process keeps it and it belongs to that session."""
        self._purge()
        stream = self._streams.get(run_id)
        return stream if stream is not None and stream.key == key else None

    def run_ended(self, entry: _Run) -> None:
        """A run left the registry: its log ends now, if its request did not end it."""
        stream = self._streams.get(entry.run_id)
        if stream is not None and not stream.ended:
            stream.append(UNFINISHED)
            stream.end()

    def here(self) -> list[RunStream]:
        """Every log this process keeps (a backend writes them again after an outage)."""
        self._purge()
        return list(self._streams.values())

    def _purge(self) -> None:
        now = time.monotonic()
        ended = self._ended
        while ended and (ended[0].expires_at or 0.0) <= now:
            stream = ended.popleft()
            if self._streams.get(stream.run_id) is stream:
                del self._streams[stream.run_id]
