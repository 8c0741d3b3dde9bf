"""ADK's rewind: ``Runner.rewind_async`` appends an event that hides an invocation and
undoes its state and artifact deltas. Checked on google-adk 2.13.0, 2.14.1, 2.15.0."""

from __future__ import annotations

from typing import Any

try:
    from google.adk.errors import InvocationNotFoundError
except ImportError:  # pragma: no cover - an ADK without it raises something else: retried

    class InvocationNotFoundError(Exception):  # type: ignore[no-redef]
        """Stands in for ADK's error where ADK has none: never raised."""


__all__ = ["InvocationNotFoundError", "can_rewind", "rewind"]


def can_rewind(runner_class: Any = None) -> bool:
    """Whether ADK's ``Runner`` can rewind (``action="rollback"`` needs it)."""
    if runner_class is None:
        from google.adk.runners import Runner

        runner_class = Runner
    return callable(getattr(runner_class, "rewind_async", None))


async def rewind(runner: Any, *, user_id: str, session_id: str, before_invocation_id: str) -> None:
    """Rewind the session to before the invocation (its events stay, hidden from prompts)."""
    await runner.rewind_async(
        user_id=user_id, session_id=session_id, rewind_before_invocation_id=before_invocation_id
    )
