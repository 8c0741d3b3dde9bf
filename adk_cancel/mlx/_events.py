"""What a job on the MLX worker thread reports, and the channel that carries it to the loop.

The worker thread never touches the event loop's objects: each generation job owns a
:class:`Channel` and puts :data:`Event` values into it (text, tool calls, then exactly one
:class:`Finished` or :class:`Failed`); the coroutine that submitted the job reads them.
:class:`JobStats` is written by the worker as the job runs and read by anyone (its fields
only ever grow or go from ``None`` to a value).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

Finish = Literal["stop", "length", "cancelled", "error", "skipped"]

_RECENT_TOKENS = 64


@dataclass
class JobStats:
    """What one job did, measured on the worker thread (``time.perf_counter`` clock)."""

    job_id: int
    model: str
    queued_at: float
    started: bool = False
    finish: Finish | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens whose KV cache came from the prompt cache (not read again)."""
    prefill_chunks: int = 0
    prefill_tokens: int = 0
    """Prompt tokens the model read for this job: all but the cached ones, once the
    first answer token is sampled (``cached_tokens + prefill_tokens == prompt_tokens``)."""
    max_prefill_chunk_s: float = 0.0
    decode_batch_max: int = 0
    """The most sequences this job shared a decode step with (itself included)."""
    stopped_by: Literal["cancel", "abort"] | None = None
    """What stopped the job early: its caller (task cancelled, generator closed, worker
    shut down) or the bound ADK invocation's abort flag."""
    started_at: float | None = None
    first_token_at: float | None = None
    cancel_requested_at: float | None = None
    stopped_at: float | None = None
    """When the job left the worker with nothing of it still computing."""
    last_token_at: float | None = None
    token_done_at: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_RECENT_TOKENS)
    )
    """When each of the last tokens was computed (bounded: history keeps many jobs)."""

    def token_done(self, at: float) -> None:
        self.token_done_at.append(at)
        self.generated_tokens += 1
        if self.first_token_at is None:
            self.first_token_at = at
        self.last_token_at = at

    @property
    def tokens_after_cancel(self) -> int:
        """Tokens whose computation finished after the cancel was requested."""
        if self.cancel_requested_at is None:
            return 0
        return sum(1 for t in self.token_done_at if t > self.cancel_requested_at)

    @property
    def cancel_to_idle_s(self) -> float | None:
        if self.cancel_requested_at is None or self.stopped_at is None:
            return None
        return max(0.0, self.stopped_at - self.cancel_requested_at)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second after the first one (which includes reading the prompt)."""
        if self.first_token_at is None or self.last_token_at is None:
            return None
        if self.generated_tokens < 2:
            return None
        return (self.generated_tokens - 1) / (self.last_token_at - self.first_token_at)


# Events a generation job sends to the event loop.


@dataclass(frozen=True)
class TextPiece:
    text: str
    thought: bool = False


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class MalformedToolCall:
    raw: str
    reason: str


@dataclass(frozen=True)
class Finished:
    finish: Finish
    stats: JobStats


@dataclass(frozen=True)
class Failed:
    error: BaseException
    stats: JobStats


Event = TextPiece | ToolCall | MalformedToolCall | Finished | Failed


class _Waker:
    """Wakes one event loop for any number of channels with one self-pipe write.

    A batch step puts a token into every sequence's channel; one wake per channel would
    be as many writes to the loop's self-pipe, and as many GIL hand-overs, per step."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._due: list[Channel] = []
        self._scheduled = False

    def wake(self, channel: Channel) -> bool:
        with self._lock:
            self._due.append(channel)
            if self._scheduled:
                return True  # a wake is on its way and will take this channel too
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed: its consumers no longer exist
            with self._lock:
                self._due.clear()
                self._scheduled = False
            return False
        return True

    def _run(self) -> None:
        with self._lock:
            due, self._due = self._due, []
            self._scheduled = False
        for channel in due:
            channel._wake()


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waker] = weakref.WeakKeyDictionary()
_wakers_lock = threading.Lock()


def _waker(loop: asyncio.AbstractEventLoop) -> _Waker:
    with _wakers_lock:
        waker = _wakers.get(loop)
        if waker is None:
            waker = _wakers[loop] = _Waker(loop)
        return waker


class Channel:
    """Worker-to-event-loop queue that wakes the loop at most once per batch.

    Waking the loop per token would cost a self-pipe write and a GIL hand-over each
    time; when the loop is busy, tokens pile up and are taken in one go instead.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waker = _waker(loop)
        self._lock = threading.Lock()
        self._items: collections.deque[Event] = collections.deque()
        self._wake_pending = False
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Event, *, wake: bool = True) -> bool:
        """Worker side. False when the loop is gone (nobody will ever read).

        ``wake=False`` only queues the item; it is read with the next woken batch.
        """
        with self._lock:
            self._items.append(item)
            if not wake:
                return not self._loop.is_closed()
            if self._wake_pending:
                return True
            self._wake_pending = True
        return self._waker.wake(self)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> list[Event]:
        """Loop side: every event sent so far, waiting for at least one."""
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
