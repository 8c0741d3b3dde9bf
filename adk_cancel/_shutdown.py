"""Ending a server: what adk-cancel's app lifespan runs when the app shuts down.

Optional parts that own resources for the whole process (the MLX worker thread) register an
async hook here when they start using them; the lifespan of every app that adk-cancel
installed runs the hooks on shutdown. This keeps the core free of imports of optional
extras: nothing here knows what a hook ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("adk_cancel")

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
