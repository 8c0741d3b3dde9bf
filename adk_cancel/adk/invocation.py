"""A run's ``InvocationContext``: its abort, and the invocation behind a callback context.

Checked on google-adk 2.13.0, 2.14.1, 2.15.0.
"""

from __future__ import annotations

from typing import Any


def can_abort(invocation_context_class: Any = None) -> bool:
    """Whether ADK's ``InvocationContext`` has the cooperative ``abort()`` (2.x).

    Without it a cancel can only cancel the run's task: ADK then seals nothing, and
    adk-cancel's read-back answers the open calls."""
    if invocation_context_class is None:
        from google.adk.agents.invocation_context import InvocationContext

        invocation_context_class = InvocationContext
    return callable(getattr(invocation_context_class, "abort", None))


def abort(invocation_context: Any) -> bool:
    """ADK's cooperative abort (thread-safe in ADK: ``call_soon_threadsafe``): tools see
    ``is_aborted``, the runner stops and seals each unanswered call. False where the ADK
    running has no ``abort()``: the caller forces instead."""
    method = getattr(invocation_context, "abort", None)
    if method is None:
        return False
    method()
    return True


def invocation_of(callback_context: Any) -> Any:
    """The ``InvocationContext`` behind a ``CallbackContext`` (private in ADK), or the
    callback context itself: both have ``is_aborted``, and binding the invocation keeps no
    per-call state delta alive for the run's life."""
    invocation = getattr(callback_context, "_invocation_context", None)
    return invocation if invocation is not None else callback_context
