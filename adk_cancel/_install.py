"""Putting cancellation on an ADK FastAPI app: ``install`` and ``get_fast_api_app``."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from ._middleware import CancelMiddleware
from ._options import CancelOptions
from ._registry import RunRegistry
from ._rejoin import build_rejoin_router
from ._routes import add_routes_first, build_router
from ._shutdown import GracefulShutdown, drain, run_app_shutdown_hooks
from ._writes import session_writes
from .adk.checks import check_adk
from .adk.web_server import WebServer, find_web_server

logger = logging.getLogger("adk_cancel")

PLUGIN_PATH = "adk_cancel.CANCEL_PLUGIN"
"""Dotted path of the plugin instance, for ADK's ``extra_plugins``."""


def install(app: FastAPI, **options: Any) -> RunRegistry:
    """Install cancellation on an ADK app that was already built; call it before serving.

    ``options`` are :class:`CancelOptions` fields (``cancel_backend``, ``cancel_grace_s``,
    ``cancel_node_id``, ``shutdown_grace_s``, ``chat``), the same names
    ``get_fast_api_app`` and the CLI take. On an app from ADK's ``get_fast_api_app`` it adds
    the ADK plugin too (runners built earlier are rebuilt on their next request), so cancels
    abort cooperatively. On an app whose ADK web server it cannot find, cancels can only
    cancel the request's task by force and cannot repair the session (no session service in
    reach): add ``extra_plugins=["adk_cancel.CANCEL_PLUGIN"]`` there.
    """
    return _install(app, CancelOptions(**options))


def _install(app: FastAPI, settings: CancelOptions) -> RunRegistry:
    if getattr(app.state, "adk_cancel", None) is not None:
        raise RuntimeError("adk-cancel is already installed on this app")
    registry = RunRegistry(settings)
    found = find_web_server(app)
    server = WebServer(found) if found is not None else None
    # Before adk-cancel adds its routes: an ADK that serves its own :cancel is told apart.
    for finding in check_adk(app, server is not None):
        (logger.warning if finding.lost else logger.info)("%s", finding.line())
    default_app = os.environ.get("ADK_DEFAULT_APP_NAME")
    get_runner = None
    if server is not None:
        if server.session_service is not None:
            # Before any run writes: the first write of the first run counts too.
            session_writes(server.session_service)
        server.add_plugin(PLUGIN_PATH)
        default_app = server.default_app_name or default_app
        get_runner = server.get_runner
    registry.plugin_installed = server is not None
    try:
        app.add_middleware(
            CancelMiddleware,
            registry=registry,
            default_app_name=default_app,
            get_runner=get_runner,
        )
    except RuntimeError as exc:
        raise RuntimeError(
            "adk_cancel.install() must run before the app starts serving requests"
        ) from exc
    add_routes_first(app, build_router(registry))
    add_routes_first(app, build_rejoin_router(registry))
    app.router.lifespan_context = _with_registry(app.router.lifespan_context, registry)
    if settings.chat:
        from .chat import add_chat_route

        add_chat_route(app)
    if settings.metrics:
        from ._metrics import add_metrics_route

        add_metrics_route(app)
    app.state.adk_cancel = registry
    return registry


def _with_registry(
    inner: Callable[[Any], contextlib.AbstractAsyncContextManager[Any]], registry: RunRegistry
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        # One app can be started more than once, even overlapping (test clients): the
        # first start opens the registry, the last stop drains and closes it.
        first = registry.lifespans == 0
        registry.lifespans += 1
        shutdown = GracefulShutdown(registry, registry.options.shutdown_grace_s)
        try:
            if first:
                registry.accepting = True
                await registry.start()
                shutdown.install()
            async with inner(app) as state:
                if first and registry.options.gc_freeze:
                    _freeze_gc()
                yield state
        finally:
            registry.lifespans -= 1
            try:
                await shutdown.aclose()
                if registry.lifespans == 0:
                    # Whatever is left (a server stopped without a signal) ends here, sealed.
                    await drain(registry, 0)
                    await registry.stop()
            finally:
                if registry.lifespans == 0:
                    await run_app_shutdown_hooks()

    return lifespan


def _freeze_gc() -> None:
    """Move what the server loaded at startup out of the garbage collector's reach: a full
    collection of an ADK server's heap pauses the event loop for 100-250 ms, and every
    deadline and cancel due meanwhile waits for it. Objects still die by reference count."""
    gc.collect()
    gc.freeze()


def get_fast_api_app(**kwargs: Any) -> FastAPI:
    """ADK's ``get_fast_api_app`` with cancellation installed.

    Takes ADK's keyword arguments and :class:`CancelOptions`'s (``cancel_backend``: a
    backend URL such as ``memory://`` or ``redis://host:port/db``, or a backend object;
    ``cancel_grace_s``; ``cancel_node_id``; ``shutdown_grace_s``; ``chat``), the same names
    as ``install`` and the CLI.
    """
    from google.adk.cli import fast_api

    settings, adk_kwargs = CancelOptions.split(kwargs)
    return build_app(fast_api.get_fast_api_app, settings, adk_kwargs)


def build_app(
    adk_factory: Callable[..., FastAPI], settings: CancelOptions, adk_kwargs: dict[str, Any]
) -> FastAPI:
    """``adk_factory(**adk_kwargs)`` (ADK's ``get_fast_api_app``) with our plugin added to
    its ``extra_plugins``, then cancellation installed on the app it built."""
    plugins = list(adk_kwargs.pop("extra_plugins", None) or [])
    if PLUGIN_PATH not in plugins:
        plugins.append(PLUGIN_PATH)
    app = adk_factory(extra_plugins=plugins, **adk_kwargs)
    _install(app, settings)
    return app
