"""ADK's own ``:cancel``, if a release ships one.

ADK's open PR #5983 proposes ``POST /apps/{app_name}/users/{user_id}/sessions/{session_id}
:cancel`` on ADK's app: a process-local registry of the run's ``asyncio.Task`` per session,
``task.cancel()`` (no abort, no seal, no repair), the answer ``{"status": "cancelled",
"session_id": ...}`` and a 404 whose detail contains "no active run". adk-cancel serves the
same path, ahead of every ADK route, with an answer that is a superset of that one (the same
``status``, ``session_id`` and 404 detail, plus the per-run outcome): ADK's route is then
never reached, and its registry only ever holds tasks that ADK's own handlers add and remove
in their ``finally``, so it can neither keep a run alive nor grow. No release up to 2.15.0
ships it.
"""

from __future__ import annotations

from typing import Any

CANCEL_SUFFIX = ":cancel"


def native_cancel_routes(app: Any, ours: set[Any] | None = None) -> list[str]:
    """The paths of the app's ``:cancel`` routes that are not in ``ours`` (ADK's own)."""
    found: list[str] = []
    for route in getattr(getattr(app, "router", None), "routes", ()):
        path = getattr(route, "path", "")
        if isinstance(path, str) and path.endswith(CANCEL_SUFFIX):
            if ours is None or route not in ours:
                found.append(path)
    return found
