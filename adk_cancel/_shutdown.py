"""Ending a server: graceful shutdown on SIGINT/SIGTERM, and what else ends with the app.

uvicorn (which ``adk api_server`` runs) waits for open connections to close before it stops,
so a run in flight kept a Ctrl-C'd server alive until the run ended on its own, possibly
never. adk-cancel knows every run, so it stops them the documented way first:

1. the first SIGINT or SIGTERM: new runs are refused (503; websocket close 1012), active
   runs get ``shutdown_grace_s`` to finish on their own;
2. then every run still going is cancelled like a ``:cancel`` with the reason
   ``server shutting down`` (abort, grace, force, repair; each client told per route);
3. then the signal goes on to whoever handled it before (uvicorn), which closes the now idle
   connections and runs the app's shutdown: this worker's runs leave Redis, and the
   registered hooks end what optional parts started (the MLX worker thread).

A second signal while runs drain skips the rest of the grace period and hands the signal on
at once (a third then force-quits uvicorn). Signal handlers can only be installed from the
main thread; a server run elsewhere (a test's thread) shuts down as uvicorn alone would.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import anyio

from ._order import CancelOrder

if TYPE_CHECKING:
    from ._registry import RunRegistry

logger = logging.getLogger("adk_cancel")

SHUTDOWN_REASON = "server shutting down"
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

ShutdownHook = Callable[[], Awaitable[object]]

_hooks: list[ShutdownHook] = []


def on_app_shutdown(hook: ShutdownHook) -> None:
    """Run ``hook`` when an app with adk-cancel shuts down (registered once however often
    this is called with it). A hook must be safe to run when there is nothing to end, and
    more than once: several apps may share a process."""
    if hook not in _hooks:
        _hooks.append(hook)


async def run_app_shutdown_hooks() -> None:
    """Run every registered hook; one failing does not keep the others from running."""
    for hook in list(_hooks):
        try:
            await hook()
        except Exception:
            logger.exception("adk-cancel: a shutdown hook (%r) failed", hook)


async def drain(registry: RunRegistry, grace_s: float, hurry: anyio.Event | None = None) -> int:
    """Refuse new runs, give active ones ``grace_s`` (or until ``hurry`` is set) to end on
    their own, then cancel the rest and wait for them; returns how many were cancelled."""
    registry.accepting = False
    registry.streams.close()
    began = anyio.current_time()
    with anyio.move_on_after(grace_s):
        async with anyio.create_task_group() as tg:

            async def idle() -> None:
                await registry.wait_idle()
                tg.cancel_scope.cancel()

            async def hurried() -> None:
                if hurry is not None:
                    await hurry.wait()
                    tg.cancel_scope.cancel()

            tg.start_soon(idle)
            tg.start_soon(hurried)
    keys = registry.keys_here()
    if not keys:
        return 0
    logger.warning(
        "Shutting down: cancelling the runs of %d session(s) still going after %.1f s",
        len(keys),
        anyio.current_time() - began,
    )
    cancelled = 0

    async def cancel(order: CancelOrder) -> None:
        nonlocal cancelled
        cancelled += len(await registry.cancel_here(order))

    async with anyio.create_task_group() as tg:
        for key in keys:
            order = CancelOrder(
                key, SHUTDOWN_REASON, timeout_s=registry.default_timeout_s(), cause="shutdown"
            )
            tg.start_soon(cancel, order)
    return cancelled


class GracefulShutdown:
    """Owns the signal handlers and the drain task of one app (see the module docstring)."""

    def __init__(self, registry: RunRegistry, grace_s: float) -> None:
        self.registry = registry
        self.grace_s = grace_s
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._hurry = anyio.Event()

    def install(self) -> None:
        """Chain our handler before the current SIGINT/SIGTERM handlers (uvicorn's, when the
        lifespan runs under uvicorn); a no-op outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for signum in HANDLED_SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    async def aclose(self) -> None:
        """Put the previous handlers back and end the drain task if it is still going."""
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
        self._previous.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of the main thread, possibly inside
        # the event loop's own code: only schedule work here.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._signalled, signum)

    def _signalled(self, signum: int) -> None:
        if self._task is None:
            logger.warning(
                "%s: refusing new runs; active runs have %.1f s to finish, then they are "
                "cancelled (send it again to cancel them now)",
                signal.Signals(signum).name,
                self.grace_s,
            )
            self._task = asyncio.get_running_loop().create_task(
                self._drain_then_pass_on(signum), name="adk-cancel graceful shutdown"
            )
        else:
            self._hurry.set()
            self._pass_on(signum)

    async def _drain_then_pass_on(self, signum: int) -> None:
        try:
            await drain(self.registry, self.grace_s, self._hurry)
        except Exception:
            logger.exception("adk-cancel: the graceful shutdown failed; stopping anyway")
        finally:
            if not self._hurry.is_set():
                self._pass_on(signum)

    def _pass_on(self, signum: int) -> None:
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, None)
        elif previous == signal.SIG_DFL:
            # Nobody handled it before us: what the signal would have done at first.
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
