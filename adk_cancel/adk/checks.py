"""What the running google-adk lacks of what adk-cancel needs, told at install.

Each check looks for one hook of this package and, when it is missing, says which guarantee
is lost and what to do. ``install`` logs each as a warning that names the google-adk
version; nothing is downgraded silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .invocation import can_abort
from .live import handler_readable
from .native_cancel import native_cancel_routes
from .rewind import can_rewind
from .version import adk_version, outside_tested_range

PLUGIN_CALLBACKS = (
    "on_user_message_callback",
    "before_run_callback",
    "before_model_callback",
    "on_event_callback",
)
"""The ``BasePlugin`` callbacks adk-cancel's plugin overrides: one ADK no longer calls
would leave runs without their invocation context (nothing to abort)."""


@dataclass(frozen=True)
class Finding:
    """One hook the running ADK lacks (``lost``), or a fact worth a line (``note``)."""

    hook: str
    message: str
    lost: bool = True

    def line(self) -> str:
        return f"adk-cancel on google-adk {adk_version()}: {self.message}"


def check_adk(
    app: Any,
    server_found: bool,
    *,
    invocation_context_class: Any = None,
    runner_class: Any = None,
    plugin_class: Any = None,
) -> list[Finding]:
    """Every finding for ``app`` (built by ADK's ``get_fast_api_app`` if ``server_found``)
    on the running ADK. The classes default to ADK's; tests pass others."""
    findings: list[Finding] = []
    if (outside := outside_tested_range()) is not None:
        findings.append(Finding("version", outside))
    if not server_found:
        findings.append(
            Finding(
                "web server",
                "ADK's web server was not found on this app, so adk-cancel cannot add its "
                "plugin or reach the session service: a cancel can only cancel the run's "
                "task by force (no abort, no seal) and cannot repair or roll back the "
                "session. Build the app with adk_cancel.get_fast_api_app(...) or ADK's "
                'get_fast_api_app(..., extra_plugins=["adk_cancel.CANCEL_PLUGIN"]).',
            )
        )
    if plugin_class is None:
        from google.adk.plugins.base_plugin import BasePlugin

        plugin_class = BasePlugin
    gone = [name for name in PLUGIN_CALLBACKS if not hasattr(plugin_class, name)]
    if gone:
        findings.append(
            Finding(
                "plugin",
                f"BasePlugin has no {', '.join(gone)}: adk-cancel's plugin is not called "
                "there, so runs may never hand over their invocation context and a cancel "
                "can only force them. Pin pip install 'google-adk<2.16'.",
            )
        )
    if not can_abort(invocation_context_class):
        findings.append(
            Finding(
                "abort",
                "InvocationContext has no abort(): a cancel cannot stop a run cooperatively, "
                "so every cancel forces after cancel_grace_s and ADK seals nothing "
                "(adk-cancel's read-back answers the calls left open).",
            )
        )
    if not can_rewind(runner_class):
        findings.append(
            Finding(
                "rewind",
                'Runner has no rewind_async(): cancels with "action": "rollback" (and the '
                "busy policy rollback) stop the run but cannot undo it; their answer says "
                "rolled_back false.",
            )
        )
    live_endpoint = _live_endpoint(app)
    if server_found and live_endpoint is None:
        findings.append(
            Finding(
                "live handler",
                "this app has no /run_live websocket route: there is nothing live to cancel "
                "(adk-cancel's /run_live handling stays idle).",
            )
        )
    elif server_found and not handler_readable(live_endpoint):
        findings.append(
            Finding(
                "live handler",
                "ADK's /run_live handler is not the one adk-cancel reads (run_agent_live with "
                "its list of tasks): a cancelled live run still stops and closes 4000, but a "
                "task of ADK's that fails by itself may be logged as 'Task exception was never "
                "retrieved'.",
            )
        )
    if paths := native_cancel_routes(app):
        findings.append(
            Finding(
                "native cancel",
                f"ADK serves its own {paths[0]}; adk-cancel's route comes first on that "
                "path and answers a superset of ADK's answer (status, session_id, the "
                "404 'No active run'), so ADK's is never reached.",
                lost=False,
            )
        )
    return findings


def _live_endpoint(app: Any) -> Any | None:
    """The endpoint of the app's ``/run_live`` websocket route, or None."""
    for route in getattr(getattr(app, "router", None), "routes", ()):
        if getattr(route, "path", None) == "/run_live" and type(route).__name__ in (
            "APIWebSocketRoute",
            "WebSocketRoute",
        ):
            return getattr(route, "endpoint", None)
    return None
