"""adk-cancel: stop a running Google ADK agent.

``POST /apps/{app}/users/{user}/sessions/{session}:cancel`` stops the run in flight for that
session, whichever route started it (/run, /run_sse, /run_live), and leaves the session
well-formed for the next turn; ``POST /apps/{app}/users/{user}:cancel`` stops every run of a
user. The backend interface (``CancelBackend``, ``LocalNode``, ``RedisBackend``) lives in
:mod:`adk_cancel.backends`; helpers for tool authors in :mod:`adk_cancel.tools`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._abort_source import bind_abort_source, current_abort_probe
    from ._install import PLUGIN_PATH, get_fast_api_app, install
    from ._middleware import CancelMiddleware
    from ._models import (
        BusyResponse,
        CancelledRun,
        CancelRequest,
        CancelResponse,
        RemainingRun,
        RunInfo,
        RunsResponse,
        SessionKey,
        UserCancelResponse,
    )
    from ._options import CancelOptions
    from ._order import CancelOrder
    from ._plugin import CANCEL_PLUGIN, CancelPlugin
    from ._registry import RunRegistry
    from ._repair import RepairFailed, repair_session
    from ._response import WS_CLOSE_CANCELLED

__version__ = "0.1.0"

__all__ = [
    "CANCEL_PLUGIN",
    "PLUGIN_PATH",
    "WS_CLOSE_CANCELLED",
    "BusyResponse",
    "CancelMiddleware",
    "CancelOptions",
    "CancelOrder",
    "CancelPlugin",
    "CancelRequest",
    "CancelResponse",
    "CancelledRun",
    "RemainingRun",
    "RepairFailed",
    "RunInfo",
    "RunRegistry",
    "RunsResponse",
    "SessionKey",
    "UserCancelResponse",
    "bind_abort_source",
    "current_abort_probe",
    "get_fast_api_app",
    "install",
    "repair_session",
]

# Where each public name lives. They are imported on first use, not with the package: they
# import ADK (about 2 s), and `adk-cancel --help`, `cancel` and `runs` need none of it.
_HOME = {
    "bind_abort_source": "._abort_source",
    "current_abort_probe": "._abort_source",
    "PLUGIN_PATH": "._install",
    "get_fast_api_app": "._install",
    "install": "._install",
    "WS_CLOSE_CANCELLED": "._response",
    "CancelMiddleware": "._middleware",
    "BusyResponse": "._models",
    "CancelledRun": "._models",
    "CancelRequest": "._models",
    "CancelResponse": "._models",
    "RemainingRun": "._models",
    "RunInfo": "._models",
    "RunsResponse": "._models",
    "SessionKey": "._models",
    "UserCancelResponse": "._models",
    "CancelOptions": "._options",
    "CancelOrder": "._order",
    "CANCEL_PLUGIN": "._plugin",
    "CancelPlugin": "._plugin",
    "RunRegistry": "._registry",
    "RepairFailed": "._repair",
    "repair_session": "._repair",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
