"""A one-file chat page with a Stop button, served next to ADK's API server routes.

``adk_cancel.get_fast_api_app(chat=True)`` and ``adk-cancel api_server`` (``--chat``, the
CLI's default) serve it at ``/chat``. On an app you build yourself, ``add_chat_route(app)``
adds it; ``render_chat_page()`` is the page itself, to serve some other way. The page talks
to the API server of its own origin: ``/list-apps``, the session routes, ``/run_sse`` and
``:cancel`` (on a server without adk-cancel, Stop falls back to dropping the stream).
"""

from __future__ import annotations

import html
from functools import cache
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.routing import Match

__all__ = ["CHAT_PATH", "add_chat_route", "render_chat_page"]

CHAT_PATH = "/chat"
"""Where ``adk-cancel`` and ``get_fast_api_app(chat=True)`` serve the page."""
_API_BASE_PLACEHOLDER = "__ADK_API_BASE__"


@cache
def _chat_template() -> str:
    """The page as shipped in the package (``adk_cancel/static/chat.html``)."""
    page = resources.files("adk_cancel").joinpath("static").joinpath("chat.html")
    return page.read_text(encoding="utf-8")


def render_chat_page(api_base: str = "") -> str:
    """The chat page, talking to the API server mounted at ``api_base`` (a path, e.g. ``/adk``).

    An empty ``api_base`` means the server's root on the page's own origin.
    """
    return _chat_template().replace(
        _API_BASE_PLACEHOLDER, html.escape(api_base.rstrip("/"), quote=True)
    )


def _root_path(request: Request) -> str:
    return str(request.scope.get("root_path", "") or "")


def add_chat_route(app: FastAPI, path: str = CHAT_PATH, *, redirect_root: bool = True) -> None:
    """Serve the chat page at ``GET path`` on an ADK API server app.

    The page calls ``/list-apps``, the session routes, ``/run_sse`` and the ``:cancel``
    route of the same server, under the app's ``root_path`` (ADK's ``url_prefix``). With
    ``redirect_root``, ``GET /`` redirects to the page, unless the app already answers ``/``
    (``adk web`` sends it to its dev UI): a bare API server answers ``/`` with a 404, and a
    person who opens the server's address should land on something that works.
    """

    async def chat_page(request: Request) -> HTMLResponse:
        return HTMLResponse(
            render_chat_page(_root_path(request)),
            headers={"Cache-Control": "no-store"},
        )

    app.add_api_route(
        path,
        chat_page,
        methods=["GET"],
        response_class=HTMLResponse,
        include_in_schema=False,
        name="adk_cancel_chat",
    )
    if not redirect_root or _answers_root(app):
        return

    async def to_chat_page(request: Request) -> RedirectResponse:
        return RedirectResponse(_root_path(request) + path, status_code=307)

    app.add_api_route(
        "/",
        to_chat_page,
        methods=["GET"],
        include_in_schema=False,
        name="adk_cancel_chat_redirect",
    )


def _answers_root(app: FastAPI) -> bool:
    """Whether a route or mount of the app takes ``/`` (for any method)."""
    scope = {"type": "http", "method": "GET", "path": "/", "root_path": "", "path_params": {}}
    return any(route.matches(scope)[0] is not Match.NONE for route in app.router.routes)
