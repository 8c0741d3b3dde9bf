"""``adk-cancel api_server`` and ``web``: ADK's own click commands, serving our app.

The command keeps every flag of ADK's and adds one per :class:`CancelOptions` field. While
it runs (and only then) ADK's ``get_fast_api_app`` builds the app through
``adk_cancel``'s, whose lifespan tells the command that the server started (it logs the chat
page's address) and that it shut down cleanly. Stopped by SIGINT or SIGTERM after a clean
shutdown, the command exits 0 (ADK's alone exits 1 with ``Aborted!``, or dies of the
SIGTERM, because uvicorn raises the signal again once it has shut down).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any

import click
from fastapi import FastAPI

from ._options import CancelOptions
from .adk.commands import adk_command as adk_click_command
from .adk.commands import app_factory_replaced
from .cli import CONTEXT_SETTINGS, cancel_option_params, pop_cancel_options

logger = logging.getLogger("adk_cancel")


def adk_command(name: str, short_help: str) -> click.Command:
    """ADK's ``name`` command (``api_server`` or ``web``) with the cancel options."""
    adk = adk_click_command(name)
    adk_callback = adk.callback
    assert adk_callback is not None

    def callback(**values: Any) -> None:
        settings = pop_cancel_options(values)
        serving = _Serving()
        with _adk_builds_our_app(settings, serving), _exit_zero_after_clean_shutdown(serving):
            adk_callback(**values)

    return click.Command(
        name,
        params=[*adk.params, *cancel_option_params()],
        callback=callback,
        help=f"{short_help}\n\n{_our_examples(adk.help or '')}",
        short_help=short_help,
        context_settings=CONTEXT_SETTINGS,
    )


def _our_examples(adk_help: str) -> str:
    """ADK's help text, its examples run through this command instead of ``adk``."""
    # Dedented here: click dedents a docstring by its second line, which is ours now.
    return re.sub(r"\badk (api_server|web)\b", r"adk-cancel \1", inspect.cleandoc(adk_help))


class _Serving:
    """What the command learns from the app's lifespan."""

    def __init__(self) -> None:
        self.shut_down_cleanly = False

    def watch(self, app: FastAPI, chat_url: str | None) -> None:
        inner = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            async with inner(app) as state:
                if chat_url:
                    logger.info("Chat page: %s", chat_url)
                yield state
            # Not reached when uvicorn force-quits (a second Ctrl-C): it skips the lifespan's
            # shutdown then, and the command exits as ADK's does.
            self.shut_down_cleanly = True

        app.router.lifespan_context = lifespan


@contextlib.contextmanager
def _adk_builds_our_app(settings: CancelOptions, serving: _Serving) -> Iterator[None]:
    """While ADK's own command runs, its ``get_fast_api_app`` builds our app; undone after."""
    from ._install import build_app

    def ours(adk_factory: Callable[..., Any], adk_kwargs: dict[str, Any]) -> Any:
        app = build_app(adk_factory, settings, adk_kwargs)
        serving.watch(app, _chat_url(adk_kwargs) if settings.chat else None)
        return app

    with app_factory_replaced(ours):
        yield


def _chat_url(adk_kwargs: dict[str, Any]) -> str:
    """Where a browser on this machine finds the chat page of the server ADK starts."""
    from .chat import CHAT_PATH

    host = str(adk_kwargs.get("host") or "127.0.0.1")
    port = adk_kwargs.get("port") or 8000
    # A wildcard address listens on every interface; a browser opens loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{CHAT_PATH}"


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread (a request to stop, like KeyboardInterrupt)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


@contextlib.contextmanager
def _exit_zero_after_clean_shutdown(serving: _Serving) -> Iterator[None]:
    """Turn the SIGINT or SIGTERM that uvicorn raises again after a clean shutdown into a
    normal return (exit 0).

    uvicorn handles both signals while it serves, then restores the previous handlers and
    raises the signal again: SIGINT becomes KeyboardInterrupt (click: ``Aborted!``, exit 1),
    SIGTERM kills the process (143). With our SIGTERM handler in place before ADK's command
    starts, SIGTERM comes back as ``_Terminated`` too. Either one ends the command quietly if
    the app shut down cleanly; otherwise (a signal during startup, a failed or forced
    shutdown) the process ends as it would have without us.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        yield
    except KeyboardInterrupt:
        if not serving.shut_down_cleanly:
            raise
    except _Terminated:
        if not serving.shut_down_cleanly:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
            raise
    finally:
        if on_main_thread:
            # None: the previous handler was not installed from Python; the default is ours.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
