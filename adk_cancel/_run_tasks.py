"""The tasks beside one run's app (disconnect listener, deadline and cancel watchers), and
the scope that cancels the app's call alone.

Like an anyio task group around a cancel scope: the first helper to fail cancels the app,
and ``aclose`` ends every helper and raises that failure. Not one, because this object lives
as long as its run, and on a server full of runs waiting in tools every byte of it counts a
thousand times: a task group and its two tasks were about 8 KB of every run, an anyio
``CancelScope`` alone about 600 B (an instance dictionary and two sets). Here the run's
helpers are plain tasks in a list, and the app's scope is ``Task.cancel`` counted and taken
back with ``Task.uncancel`` on the way out, as ``asyncio.timeout`` does (Python 3.11+; on
3.10 an anyio scope does it).

A cancel scope must also keep cancelling an app that swallows one cancellation: the force
path calls ``cancel_app`` every ``FORCE_RETRY_S`` until the app has returned, and each call
is taken back on the way out.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._registry import RunEntry

_UNCANCEL = sys.version_info >= (3, 11)
_NO_CONTEXT = contextvars.Context()

Watcher = Callable[["RunEntry", "RunTasks"], Coroutine[Any, Any, None]]


class RunTasks:
    """One run's helper tasks, and the scope of its app's call (``with tasks: ...``)."""

    __slots__ = (
        "_base",
        "_cancels",
        "_entry",
        "_error",
        "_host",
        "_inside",
        "_scope",
        "_tasks",
        "_watcher",
    )

    def __init__(self, entry: RunEntry, watcher: Watcher) -> None:
        self._entry = entry
        self._watcher = watcher
        # Made by the first helper: most runs on a busy server have none (their disconnect
        # listener runs in ADK's task, and no cancel or deadline has come).
        self._tasks: list[asyncio.Task[None]] | None = None
        self._error: BaseException | None = None
        self._host: asyncio.Task[Any] | None = None
        self._inside = False
        self._cancels = 0
        self._base = 0
        self._scope = None if _UNCANCEL else anyio.CancelScope()

    # -- the helpers -------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        # No copy of the context for it (Python's default): ``_ended`` reads none, and the
        # copy would be kept as long as the run.
        task.add_done_callback(self._ended, context=_NO_CONTEXT)
        if self._tasks is None:
            self._tasks = []
        self._tasks.append(task)

    def start_watcher(self) -> None:
        """The run's first cancel (``RunEntry.on_cancel``): its watcher starts."""
        self.spawn(self._watcher(self._entry, self))

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._error is None:
            self._error = error
            self.cancel_app()

    async def aclose(self) -> None:
        """Cancel the helpers and wait until each has ended (a cancellation of this task
        meanwhile is raised once they have); then raise the first helper's error."""
        cancelled = False
        while pending := [t for t in self._tasks or () if not t.done()]:
            for task in pending:
                task.cancel()
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        if self._error is not None:
            raise self._error

    # -- the app's scope ---------------------------------------------------------------------

    def cancel_app(self) -> None:
        """Cancel the app's call, if it is still going on; a no-op once it has returned."""
        if not self._inside:
            return
        if self._scope is not None:
            self._scope.cancel()
        elif self._host is not None and self._host.cancel():
            self._cancels += 1

    def __enter__(self) -> RunTasks:
        if self._scope is not None:
            self._scope.__enter__()
        else:
            self._host = host = asyncio.current_task()
            self._base = host.cancelling() if host is not None else 0
        self._inside = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._inside = False
        if self._scope is not None:
            return bool(self._scope.__exit__(exc_type, exc, tb))
        cancels, self._cancels = self._cancels, 0
        if not cancels or self._host is None:
            return False
        left = 0
        for _ in range(cancels):
            left = self._host.uncancel()
        # Ours, unless someone else cancelled the task too (the server, a shutdown): then
        # the cancellation goes on up.
        return exc_type is asyncio.CancelledError and left <= self._base
