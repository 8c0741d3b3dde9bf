"""For tool authors: what a tool started stops when its run is cancelled.

A cancel aborts the run and ADK cancels an async tool's task, but nothing stops a subprocess
or a container the tool launched, or a sync tool blocked in a worker thread. Three helpers,
each given the tool's ``tool_context``:

- :func:`on_cancel` runs a callback the moment the run's cancel is signalled (a ``:cancel``,
  a disconnect, a deadline, a shutdown), before ADK gets round to cancelling the tool;
- :func:`subprocess_exec` / :func:`subprocess_shell` start a subprocess in a process group of
  its own and stop the whole group when the run is cancelled or the block is left: SIGTERM,
  then SIGKILL after ``grace_s``;
- :func:`run_abort` is a ``threading.Event``-style view of the run's abort, for a sync tool
  (in a tool thread pool) to ``wait(timeout)`` on instead of ``time.sleep``.

::

    async def build(target: str, tool_context: ToolContext) -> dict:
        async with subprocess_exec("make", target, tool_context=tool_context) as proc:
            await proc.wait()           # cancelled: the whole make process tree is stopped
        return {"exit": proc.returncode}

    def poll_job(job_id: str, tool_context: ToolContext) -> dict:  # sync, in a thread pool
        with run_abort(tool_context) as abort:
            while not job_done(job_id):
                if abort.wait(5):           # wakes at once on a cancel
                    cancel_job(job_id)
                    return {"cancelled": True}
        return {"done": True}

Served by adk-cancel, the run is found through the request's context (ADK copies it into
tool threads). Elsewhere (a plain ``Runner``) they fall back to ADK's own abort flag
(``tool_context.is_aborted``) and to the tool's task being cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from ._registry import RunEntry, current_run

__all__ = [
    "DEFAULT_GRACE_S",
    "CancelHook",
    "RunAbort",
    "ToolProcess",
    "on_cancel",
    "run_abort",
    "subprocess_exec",
    "subprocess_shell",
]

DEFAULT_GRACE_S = 2.0
"""How long a subprocess group may take to exit after SIGTERM before it gets SIGKILL."""
_POLL_S = 0.01


def _aborted(tool_context: Any) -> bool:
    return bool(getattr(tool_context, "is_aborted", False))


class CancelHook:
    """A callback registered with :func:`on_cancel`; a context manager that unregisters it."""

    def __init__(self, tool_context: Any, callback: Callable[[], object]) -> None:
        self._callback = callback
        self._context = tool_context
        self._lock = threading.Lock()
        self.fired = False
        """Whether the callback has run (it runs at most once)."""
        self._entry: RunEntry | None = current_run.get()
        if self._entry is not None:
            self._entry.cancel_callbacks.append(self.fire)
            if self._entry.cancel_order is not None:
                self.fire()  # cancelled before we got here
        elif _aborted(tool_context):
            self.fire()

    @property
    def served(self) -> bool:
        """Whether adk-cancel serves the run (else only the tool's own exit fires it)."""
        return self._entry is not None

    def fire(self) -> None:
        """Run the callback, unless it ran already."""
        with self._lock:
            if self.fired:
                return
            self.fired = True
        self._callback()

    def remove(self) -> None:
        """Unregister the callback (it will not run from now on)."""
        entry, self._entry = self._entry, None
        if entry is not None:
            with contextlib.suppress(ValueError):
                entry.cancel_callbacks.remove(self.fire)

    def __enter__(self) -> CancelHook:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Off adk-cancel, or if the block was cancelled before the signal got here: a
        # cancelled or aborted block runs the callback on its way out.
        if (exc_type is not None and issubclass(exc_type, asyncio.CancelledError)) or _aborted(
            self._context
        ):
            self.fire()
        self.remove()


def on_cancel(tool_context: Any, callback: Callable[[], object]) -> CancelHook:
    """Run ``callback()`` once when the tool's run is cancelled (at once if it already was).

    It runs on the event loop's thread, as the cancel is signalled, before ADK cancels the
    tool: keep it short and non-blocking (send a signal, set a flag, cancel a task, hand a
    slow clean-up to ``loop.run_in_executor``). Use it as ``with on_cancel(...):`` to
    unregister it when the block ends; the block being cancelled also runs it.
    """
    return CancelHook(tool_context, callback)


class RunAbort:
    """A ``threading.Event``-style view of a run's abort, for sync tools: ``is_set()`` and
    ``wait(timeout)``. ``with run_abort(ctx) as abort:`` unregisters it at the end.

    ``wait`` must run off the event loop: a sync tool that ADK runs inline blocks the loop
    (nothing, not even the cancel, runs until it returns), so there it raises
    ``RuntimeError``. Run sync tools in a tool thread pool
    (``RunConfig.tool_thread_pool_config``), or make them async.
    """

    def __init__(self, tool_context: Any) -> None:
        self._event = threading.Event()
        self._context = tool_context
        self._hook = CancelHook(tool_context, self._event.set)

    def is_set(self) -> bool:
        """Whether the run has been cancelled."""
        return self._event.is_set() or _aborted(self._context)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run is cancelled (True) or ``timeout`` seconds pass (False)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "run_abort().wait() was called on the event loop's thread: a sync tool run "
                "inline blocks the whole server until it returns, the cancel included. Run "
                "sync tools in a tool thread pool (RunConfig.tool_thread_pool_config) or "
                "make the tool async."
            )
        if self._hook.served:
            return self._event.wait(timeout) or self.is_set()
        # Not served by adk-cancel: nobody signals us, so watch ADK's abort flag.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._event.wait(_POLL_S if left is None else min(_POLL_S, left))
        return True

    def close(self) -> None:
        self._hook.remove()

    def __enter__(self) -> RunAbort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_abort(tool_context: Any) -> RunAbort:
    """The run's abort as a ``threading.Event``-style object (see :class:`RunAbort`)."""
    return RunAbort(tool_context)


# -- subprocesses -----------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies, which are dead and only wait
    to be reaped by their parent, do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not sys.platform.startswith("linux") or not proc.is_dir():
        return True
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


class ToolProcess:
    """A subprocess in a process group of its own, stopped as a group (see
    :func:`subprocess_exec`). ``process`` is the ``asyncio.subprocess.Process``."""

    def __init__(self, process: asyncio.subprocess.Process, grace_s: float) -> None:
        self.process = process
        self.grace_s = grace_s
        self.pgid = process.pid
        """The group's id (the leader's pid: it was started in a new session)."""
        self._kill_timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    async def communicate(self, input: bytes | None = None) -> tuple[bytes, bytes]:
        return await self.process.communicate(input)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to every process of the group (nothing if none is left)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def group_alive(self) -> bool:
        return _group_alive(self.pgid)

    def terminate_now(self) -> None:
        """On the cancel signal (event loop thread): SIGTERM the group at once, and SIGKILL
        it after ``grace_s`` if the tool's own exit has not stopped it by then."""
        self.signal_group(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        if self._kill_timer is None:
            self._kill_timer = loop.call_later(self.grace_s, self._kill_if_alive)

    def _kill_if_alive(self) -> None:
        if self.group_alive():
            self.signal_group(signal.SIGKILL)

    async def _gone_within(self, seconds: float) -> bool:
        # Polled: a process group has no handle to wait on (only the leader is our child).
        deadline = time.monotonic() + seconds
        while self.group_alive():
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(_POLL_S)
        return True

    async def stop(self) -> None:
        """Stop the whole group: SIGTERM, then SIGKILL after ``grace_s``; reap the leader.
        Shielded and bounded, so it completes inside a cancelled task too."""
        with anyio.CancelScope(shield=True):
            if self.group_alive():
                self.signal_group(signal.SIGTERM)
                if not await self._gone_within(self.grace_s):
                    self.signal_group(signal.SIGKILL)
                    await self._gone_within(1.0)
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            with anyio.move_on_after(1.0):
                await self.process.wait()


@contextlib.asynccontextmanager
async def _started(
    start: Callable[..., Any],
    args: tuple[Any, ...],
    tool_context: Any,
    grace_s: float,
    kwargs: dict[str, Any],
) -> AsyncIterator[ToolProcess]:
    if kwargs.get("process_group") is not None or kwargs.get("preexec_fn") is not None:
        raise ValueError(
            "subprocess_exec/subprocess_shell put the process in a group of its own: do not "
            "pass process_group or preexec_fn"
        )
    kwargs = {**kwargs, "start_new_session": True}
    process = ToolProcess(await start(*args, **kwargs), grace_s)
    hook = CancelHook(tool_context, process.terminate_now) if tool_context is not None else None
    try:
        yield process
    finally:
        if hook is not None:
            hook.remove()
        # Cancelled, failed or done: nothing of the group outlives the block.
        await process.stop()


def subprocess_exec(
    program: str | os.PathLike[str],
    *args: str | os.PathLike[str],
    tool_context: Any = None,
    grace_s: float = DEFAULT_GRACE_S,
    **kwargs: Any,
) -> contextlib.AbstractAsyncContextManager[ToolProcess]:
    """``async with subprocess_exec(program, *args, tool_context=ctx) as proc:`` -- like
    ``asyncio.create_subprocess_exec`` (same keyword arguments), with the process in a new
    session (its own process group). When the run is cancelled the group gets SIGTERM at
    once, and when the block is left (cancelled, failed or done) whatever is left of the group
    is stopped: SIGTERM, then SIGKILL after ``grace_s``."""
    return _started(asyncio.create_subprocess_exec, (program, *args), tool_context, grace_s, kwargs)


def subprocess_shell(
    cmd: str,
    *,
    tool_context: Any = None,
    grace_s: float = DEFAULT_GRACE_S,
    **kwargs: Any,
) -> contextlib.AbstractAsyncContextManager[ToolProcess]:
    """:func:`subprocess_exec` for a shell command line (``asyncio.create_subprocess_shell``):
    the shell and everything it starts share the group."""
    return _started(asyncio.create_subprocess_shell, (cmd,), tool_context, grace_s, kwargs)
