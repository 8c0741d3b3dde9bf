"""ADK's ``/run_live`` handler: the tasks it starts and leaves for others to end.

ADK's handler (``run_agent_live`` in ``cli/api_server.py``) runs an event forwarder and a
socket reader as tasks, keeps them in a local list ``tasks`` and waits for them; neither
version awaits them as it should: 2.13 leaves both running when it is cancelled inside its
``asyncio.wait``; 2.14 and 2.15 wait with ``FIRST_COMPLETED``, cancel the other and wait
for it without reading how either ended. A forwarder that fails by itself (a stale session
write on a shared database) before it ever sends would be logged as "Task exception was
never retrieved". adk-cancel finds the list in the handler's frame and ends and reads every
task in it. Checked on google-adk 2.13.0, 2.14.1, 2.15.0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("adk_cancel")

HANDLER_NAME = "run_agent_live"
"""The name of ADK's ``/run_live`` endpoint function."""
TASKS_LOCAL = "tasks"
"""The handler's local list of the tasks it started."""


def handler_readable(endpoint: Any) -> bool:
    """Whether ``endpoint`` (the ``/run_live`` route's) is the handler :func:`handler_tasks`
    can read: ADK's, with its list of tasks where adk-cancel looks for it."""
    code = getattr(endpoint, "__code__", None)
    return (
        getattr(endpoint, "__name__", None) == HANDLER_NAME
        and code is not None
        and TASKS_LOCAL in code.co_varnames
    )


def handler_tasks(host: asyncio.Task[Any]) -> list[asyncio.Task[Any]]:
    """The tasks ADK's ``/run_live`` handler started (its event forwarder and its socket
    reader), read from the handler's frame while it awaits them in ``host``, the task that
    runs it; [] where they are not found (then only the tasks seen touching the socket are
    ended)."""
    awaiting: Any = host.get_coro()
    for _ in range(64):  # the chain from uvicorn down to ADK's handler is about 20 deep
        code = getattr(awaiting, "cr_code", None)
        if code is None:
            return []  # a future or a generator: the handler is not in this chain
        if code.co_name == HANDLER_NAME:
            frame = awaiting.cr_frame
            tasks = frame.f_locals.get(TASKS_LOCAL) if frame is not None else None
            if not isinstance(tasks, list):
                return []
            return [t for t in tasks if isinstance(t, asyncio.Task)]
        awaiting = awaiting.cr_await
    return []


async def end_tasks(tasks: Iterable[asyncio.Task[Any]], drain_s: float) -> None:
    """End the tasks ADK's live handler left behind, and read how each ended.

    A handler cancelled inside its ``asyncio.wait`` skips the ``finally`` that cancels its
    tasks, and even that ``finally`` never awaits them: its socket reader would die on the
    close about to be sent, its event forwarder on a send to a gone client or on a stale
    session write, each logged as "Task exception was never retrieved". Those tasks are
    adk-cancel's to end: nobody else will.
    """
    current = asyncio.current_task()
    tasks = [t for t in tasks if t is not current]
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=drain_s)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.debug("Live run task %s ended with %r", task.get_name(), task.exception())
