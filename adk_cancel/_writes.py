"""Session writes that a cancel cannot cut in half.

A task cancelled while ADK's session service commits an event (``append_event`` awaiting
aiosqlite or a database driver) leaves the store and ADK's in-memory session object apart:
the row is written, the object's ``last_update_time`` is not, and every later write of that
invocation (ADK's own seal among them) fails with ``StaleSessionError``. Such cancels come
from everywhere: ADK's own abort clean-up cancels its root task at once, even while it
appends the user's message; a forced cancel; ADK's disconnect handling.

So, on the session service instance a run uses (wrapped once, transparent to every caller):

- a write, once started, runs to its end in a task of its own; a caller cancelled meanwhile
  gets its ``CancelledError`` at once, and the write still updates the session object;
- the writes of one session are serialized, so the next write (ADK's seal) starts from the
  session object the previous one left, not from a stale copy;
- :meth:`SessionWrites.settled` waits until a session has no write in flight, so that the
  read-back after a cancel sees everything the run wrote;
- :meth:`SessionWrites.pending` says whether a write is in flight or waiting its turn: a
  forced cancel holds off then, or it would cancel the waiting write (ADK's seal among them)
  before it starts.

A write whose caller was cancelled and which then fails is logged at debug level: its caller
is gone, and the read-back after the cancel repairs what it left.

Reads (``get_session``) run to their end too, their caller cancelled at once: cancelling a
database driver mid-query or mid-connect costs more than the query (SQLAlchemy discards the
connection; asyncpg, cancelled while it opens one, leaves a future whose error nobody reads:
"Future exception was never retrieved ... unexpected connection_lost() call", seen in the
PostgreSQL soak when a forced cancel hit a run's first read).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.adk.sessions.base_session_service import BaseSessionService

logger = logging.getLogger("adk_cancel")


class SessionWrites:
    """The writes in flight on one session service, per session id."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, asyncio.Future[Any]] = {}
        self._pending: Counter[str] = Counter()

    def pending(self, session_id: str) -> bool:
        """Whether a write of the session is in flight or waiting for its turn."""
        return self._pending[session_id] > 0

    async def settled(self, session_id: str) -> None:
        """Until the session has no write in flight (the last one ended, however)."""
        last = self._last.get(session_id)
        if last is not None and not last.done():
            await asyncio.wait([last])

    def _wrap(self, append_event: Any) -> Any:
        @functools.wraps(append_event)
        async def append_to_the_end(*args: Any, **kwargs: Any) -> Any:
            session = kwargs["session"] if "session" in kwargs else args[0] if args else None
            session_id = str(getattr(session, "id", ""))
            lock = self._locks.setdefault(session_id, asyncio.Lock())
            self._pending[session_id] += 1
            try:
                await lock.acquire()  # a caller cancelled here has started nothing
                try:
                    write = asyncio.ensure_future(append_event(*args, **kwargs))
                except BaseException:
                    lock.release()
                    raise
            except BaseException:
                self._done_waiting(session_id)
                raise
            self._last[session_id] = write
            write.add_done_callback(functools.partial(self._ended, session_id, lock))
            return await asyncio.shield(write)

        return append_to_the_end

    def _done_waiting(self, session_id: str) -> None:
        self._pending[session_id] -= 1
        if not self._pending[session_id]:
            del self._pending[session_id]

    def _ended(self, session_id: str, lock: asyncio.Lock, write: asyncio.Future[Any]) -> None:
        self._done_waiting(session_id)
        lock.release()
        if self._last.get(session_id) is write:
            del self._last[session_id]
        if not lock.locked() and self._locks.get(session_id) is lock:
            del self._locks[session_id]
        if not write.cancelled() and (error := write.exception()) is not None:
            # Read here so that it is never reported as unretrieved; a caller still waiting
            # gets it through the shield.
            logger.debug("A session write of %s failed: %r", session_id, error)


_by_service: weakref.WeakKeyDictionary[Any, SessionWrites] = weakref.WeakKeyDictionary()


def _read_to_the_end(get_session: Any) -> Any:
    @functools.wraps(get_session)
    async def read_to_the_end(*args: Any, **kwargs: Any) -> Any:
        # A cancelled caller stops waiting at once; the read ends in its own task, and the
        # shield reads its error if nobody waits for it any more.
        return await asyncio.shield(asyncio.ensure_future(get_session(*args, **kwargs)))

    return read_to_the_end


def session_writes(service: BaseSessionService) -> SessionWrites:
    """The writes of ``service``, wrapping its ``append_event`` (and ``get_session``, see
    above) the first time."""
    writes = _by_service.get(service)
    if writes is None:
        writes = SessionWrites()
        service.append_event = writes._wrap(service.append_event)  # type: ignore[method-assign]
        service.get_session = _read_to_the_end(service.get_session)  # type: ignore[method-assign]
        _by_service[service] = writes
    return writes
