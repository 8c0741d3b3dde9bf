"""ADK's web server (``AdkWebServer``), which ``get_fast_api_app`` keeps out of reach.

``get_fast_api_app`` returns a plain FastAPI app with an empty ``app.state``: the server
object that holds the runners, the plugin list and the session service is only referenced
from the closures of its route handlers. Checked on google-adk 2.13.0, 2.14.1, 2.15.0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

_SERVER_ATTRIBUTES = ("runner_dict", "extra_plugins", "runners_to_clean")


def find_web_server(app: Any) -> Any | None:
    """ADK's ``AdkWebServer`` behind ``app``, found in its route handlers' closures, or None
    (an app ADK did not build, or an ADK whose server looks different)."""
    for route in getattr(getattr(app, "router", None), "routes", ()):
        endpoint = getattr(route, "endpoint", None)
        for cell in getattr(endpoint, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if all(hasattr(value, a) for a in _SERVER_ATTRIBUTES):
                return value
    return None


@dataclass(frozen=True)
class WebServer:
    """What adk-cancel takes from ADK's web server, read once at install."""

    server: Any

    @property
    def session_service(self) -> Any | None:
        return getattr(self.server, "session_service", None)

    @property
    def default_app_name(self) -> str | None:
        name = getattr(self.server, "default_app_name", None)
        return name if isinstance(name, str) and name else None

    @property
    def get_runner(self) -> Callable[[str], Awaitable[Any]] | None:
        """``get_runner_async(app_name)``: the app's runner, built on first use."""
        get_runner: Callable[[str], Awaitable[Any]] | None = getattr(
            self.server, "get_runner_async", None
        )
        return get_runner

    def add_plugin(self, path: str) -> None:
        """Add a plugin (by dotted path) to every runner: the runners built already are
        marked for rebuilding, so their next request gets it too."""
        if path not in self.server.extra_plugins:
            self.server.extra_plugins.append(path)
            self.server.runners_to_clean.update(self.server.runner_dict)
