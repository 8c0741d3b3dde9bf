"""adk-cancel: stop a running Google ADK agent.

``POST /apps/{app}/users/{user}/sessions/{session}:cancel`` stops the run in flight for that
session, whichever route started it (/run, /run_sse, /run_live), and leaves the session
well-formed for the next turn. The backend interface (``CancelBackend``, ``LocalNode``,
``RedisBackend``) lives in :mod:`adk_cancel.backends`.
"""

from __future__ import annotations

from ._install import PLUGIN_PATH, get_fast_api_app, install
from ._middleware import WS_CLOSE_CANCELLED, CancelMiddleware
from ._models import (
    CancelledRun,
    CancelRequest,
    CancelResponse,
    RunInfo,
    RunsResponse,
    SessionKey,
)
from ._options import CancelOptions
from ._order import CancelOrder
from ._plugin import CANCEL_PLUGIN, CancelPlugin
from ._registry import RunRegistry
from ._repair import RepairFailed, repair_session

__version__ = "0.1.0"

__all__ = [
    "CANCEL_PLUGIN",
    "PLUGIN_PATH",
    "WS_CLOSE_CANCELLED",
    "CancelMiddleware",
    "CancelOptions",
    "CancelOrder",
    "CancelPlugin",
    "CancelRequest",
    "CancelResponse",
    "CancelledRun",
    "RepairFailed",
    "RunInfo",
    "RunRegistry",
    "RunsResponse",
    "SessionKey",
    "get_fast_api_app",
    "install",
    "repair_session",
]
