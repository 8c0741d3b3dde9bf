"""Which invocation's abort a model call in this task should watch.

ADK 2.13 gives a model nothing but the ``LlmRequest``; a model that wants to stop as soon
as its run is aborted (not only when its task is cancelled) reads the invocation bound
here. ``CancelPlugin.before_model_callback`` binds it for every model call of a served
app; ``adk_cancel.mlx`` offers the same for plain ``Runner`` use. Kept free of MLX so the
core plugin can bind without importing the optional extra.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Protocol


class Abortable(Protocol):
    @property
    def is_aborted(self) -> bool: ...


_current: ContextVar[Abortable | None] = ContextVar("adk_cancel_abort_source", default=None)


def bind_abort_source(context: Abortable) -> None:
    """Make model calls later in this task watch ``context.is_aborted``.

    ``context`` is anything with an ``is_aborted`` property: ADK's ``CallbackContext``,
    ``ToolContext``, ``ReadonlyContext`` or ``InvocationContext``. Reading it from another
    thread is safe: it is a flag and an ``asyncio.Event.is_set()``.
    """
    _current.set(context)


def current_abort_probe() -> Callable[[], bool] | None:
    """A thread-safe ``() -> bool`` for the invocation bound in this task, if any."""
    source = _current.get()
    if source is None:
        return None
    return lambda: source.is_aborted is True
