"""ADK's own ``api_server`` and ``web`` commands, serving an app adk-cancel builds.

``adk-cancel api_server`` runs ADK's click command itself (every flag of ADK's stays), and
while it runs, ADK's ``fast_api.get_fast_api_app`` is swapped for one that builds through
adk-cancel: ADK's command imports it from ``fast_api`` when it starts serving, so the swap
reaches it. Checked on google-adk 2.13.0, 2.14.1, 2.15.0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import click

Factory = Callable[..., Any]


def adk_command(name: str) -> click.Command:
    """ADK's click command ``api_server`` or ``web``."""
    from google.adk.cli import cli_tools_click

    commands: dict[str, click.Command] = {
        "api_server": cli_tools_click.cli_api_server,
        "web": cli_tools_click.cli_web,
    }
    return commands[name]


@contextlib.contextmanager
def app_factory_replaced(build: Callable[[Factory, dict[str, Any]], Any]) -> Iterator[None]:
    """While the block runs, ADK builds its app as ``build(adk_factory, adk_kwargs)``."""
    from google.adk.cli import fast_api

    adk_factory: Factory = fast_api.get_fast_api_app

    def ours(**adk_kwargs: Any) -> Any:
        return build(adk_factory, adk_kwargs)

    fast_api.get_fast_api_app = ours
    try:
        yield
    finally:
        fast_api.get_fast_api_app = adk_factory
