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


class MissingCommand(RuntimeError):
    """The running google-adk lacks a command (or the factory) adk-cancel wraps."""


_ATTRIBUTES = {"api_server": "cli_api_server", "web": "cli_web"}


def adk_command(name: str) -> click.Command:
    """ADK's click command ``api_server`` or ``web``; ``MissingCommand`` says what to do
    where this ADK has none: nothing of the command would work, so it is refused."""
    command: object = None
    cause: Exception | None = None
    try:
        from google.adk.cli import cli_tools_click

        command = getattr(cli_tools_click, _ATTRIBUTES[name])
    except (ImportError, AttributeError) as exc:
        cause = exc
    if not isinstance(command, click.Command):
        from .version import adk_version

        raise MissingCommand(
            f"google-adk {adk_version()} has no {name} command for adk-cancel to wrap "
            f"({cause or 'not a click command'}): install a google-adk adk-cancel is tested "
            "on (pip install 'google-adk>=2.13.0,<2.16'), or serve "
            "adk_cancel.get_fast_api_app(...) with uvicorn yourself"
        ) from cause
    return command


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
