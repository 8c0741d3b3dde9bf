"""Lets a running MLX generation see its ADK invocation being aborted.

ADK 2.13 gives a model nothing but the ``LlmRequest``. An abort (``abort_signal`` set
by ADK's /run and /run_sse routes, or ``InvocationContext.abort()``, which adk-cancel's
``:cancel`` route calls) reaches a root ``LlmAgent``'s model call as a task cancellation:
the runner's event consumer stops waiting and ``Runner._cleanup_root_task`` cancels the
root node task (``google/adk/runners.py``; inside workflows ``Workflow._run_loop`` cancels
its node tasks the same way). The adapter stops on that ``CancelledError``.

This module adds a second, earlier path: a ``before_model_callback`` (plugin or agent
callback) binds the invocation's context in a ``ContextVar`` that the model call, which
runs in the same task right after the callback, reads. The worker thread then checks
``is_aborted`` after every token together with its own cancel flag, so the generation
stops at the next token even before (or without) the task being cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Protocol

from google.adk.agents.callback_context import CallbackContext
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.plugins.base_plugin import BasePlugin


class _Abortable(Protocol):
    @property
    def is_aborted(self) -> bool: ...


_current: ContextVar[_Abortable | None] = ContextVar("adk_cancel_mlx_abort", default=None)


def bind_abort_source(context: _Abortable) -> None:
    """Make model calls later in this task watch ``context.is_aborted``.

    ``context`` is anything with an ``is_aborted`` property: ADK's ``CallbackContext``,
    ``ToolContext``, ``ReadonlyContext`` or ``InvocationContext``. Reading it from the
    worker thread is safe: it is a flag and an ``asyncio.Event.is_set()``.
    """
    _current.set(context)


def current_abort_probe() -> Callable[[], bool] | None:
    """A thread-safe ``() -> bool`` for the invocation bound in this task, if any."""
    source = _current.get()
    if source is None:
        return None
    return lambda: source.is_aborted is True


def watch_abort(callback_context: CallbackContext, llm_request: LlmRequest) -> None:
    """An agent ``before_model_callback``: ``LlmAgent(before_model_callback=watch_abort)``."""
    bind_abort_source(callback_context)


class MlxAbortPlugin(BasePlugin):
    """Binds every model call of an app to its invocation's abort state.

    Add it to a ``Runner(plugins=[MlxAbortPlugin()])``, or to ADK's server with
    ``extra_plugins=["adk_cancel.mlx.MlxAbortPlugin"]``.
    """

    def __init__(self, name: str = "adk_cancel_mlx_abort") -> None:
        super().__init__(name=name)

    async def before_model_callback(
        self, *, callback_context: CallbackContext, llm_request: LlmRequest
    ) -> LlmResponse | None:
        bind_abort_source(callback_context)
        return None
