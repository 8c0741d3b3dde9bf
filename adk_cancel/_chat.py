"""A one-file chat page with a Stop button, served next to ADK's API server routes."""

from __future__ import annotations

import html
from functools import cache
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

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


def add_chat_route(app: FastAPI, path: str = "/chat") -> None:
    """Serve the chat page at ``GET path`` on an ADK API server app.

    The page calls ``/list-apps``, the session routes, ``/run_sse`` and the ``:cancel``
    route of the same server, under the app's ``root_path`` (ADK's ``url_prefix``).
    """

    async def chat_page(request: Request) -> HTMLResponse:
        root_path = str(request.scope.get("root_path", "") or "")
        return HTMLResponse(
            render_chat_page(root_path),
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
