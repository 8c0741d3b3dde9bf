"""Lets a running MLX generation see its ADK invocation being aborted.

ADK 2.13 gives a model nothing but the ``LlmRequest``. An abort (``abort_signal`` set
by ADK's /run and /run_sse routes, or ``InvocationContext.abort()``, which adk-cancel's
``:cancel`` route calls) reaches a root ``LlmAgent``'s model call as a task cancellation:
the runner's event consumer stops waiting and ``Runner._cleanup_root_task`` cancels the
root node task (``google/adk/runners.py``; inside workflows ``Workflow._run_loop`` cancels
its node tasks the same way). The adapter stops on that ``CancelledError``.

This module adds a second, earlier path: a ``before_model_callback`` binds the
invocation's context in a ``ContextVar`` that the model call, which runs in the same task
right after the callback, reads. adk-cancel's plugin (``adk_cancel.CANCEL_PLUGIN``) binds
it for every model call, on adk-cancel's server and on a plain ``Runner(plugins=[...])``
alike; :func:`watch_abort` does the same as one agent's callback. The worker thread then
checks ``is_aborted`` after every token together with its own cancel flag, so the
generation stops at the next token even before (or without) the task being cancelled.
"""

from __future__ import annotations

from google.adk.agents.callback_context import CallbackContext
from google.adk.models.llm_request import LlmRequest

from .._abort_source import bind_abort_source, current_abort_probe

__all__ = ["bind_abort_source", "current_abort_probe", "watch_abort"]


def watch_abort(callback_context: CallbackContext, llm_request: LlmRequest) -> None:
    """An agent ``before_model_callback``: ``LlmAgent(before_model_callback=watch_abort)``."""
    bind_abort_source(callback_context)
