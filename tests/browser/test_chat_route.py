"""The chat route itself, and the redirect from ``/`` (no browser needed)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient
from support import build_app

from adk_cancel.chat import CHAT_PATH, add_chat_route, render_chat_page

pytestmark = pytest.mark.timeout(30)


def test_chat_page_is_served() -> None:
    app = FastAPI()
    add_chat_route(app)
    r = TestClient(app).get("/chat")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert '<meta name="adk-api-base" content="">' in r.text
    assert 'data-testid="send-button"' in r.text
    assert "__ADK_API_BASE__" not in r.text


def test_chat_page_follows_the_root_path_and_custom_path() -> None:
    app = FastAPI()
    add_chat_route(app, path="/ui/chat")
    r = TestClient(app, root_path="/adk").get("/ui/chat")
    assert r.status_code == 200
    assert '<meta name="adk-api-base" content="/adk">' in r.text
    assert "/ui/chat" not in app.openapi()["paths"]


def test_api_base_is_escaped() -> None:
    page = render_chat_page('/x"><script>alert(1)</script>/')
    assert "<script>alert(1)" not in page
    assert 'content="/x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in page


def test_the_root_redirects_to_the_chat_page() -> None:
    app = FastAPI()
    add_chat_route(app)
    r = TestClient(app).get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == CHAT_PATH
    assert "/" not in app.openapi()["paths"]
    behind_a_proxy = TestClient(app, root_path="/adk").get("/", follow_redirects=False)
    assert behind_a_proxy.headers["location"] == "/adk/chat"


def test_the_root_is_left_alone_when_the_app_has_one_or_is_told_so() -> None:
    own = FastAPI()

    @own.post("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse("mine")

    add_chat_route(own)
    assert TestClient(own).post("/").text == "mine"
    assert TestClient(own).get("/", follow_redirects=False).status_code == 405

    told = FastAPI()
    add_chat_route(told, redirect_root=False)
    assert TestClient(told).get("/", follow_redirects=False).status_code == 404


def test_adk_api_server_root_goes_to_the_chat_and_adk_web_root_to_its_dev_ui() -> None:
    api = TestClient(build_app(chat=True))
    assert api.get("/", follow_redirects=False).headers["location"] == "/chat"
    assert api.get("/chat").status_code == 200
    without_chat = TestClient(build_app(chat=False))
    assert without_chat.get("/", follow_redirects=False).status_code == 404
    web = TestClient(build_app(chat=True, web=True))
    assert web.get("/", follow_redirects=False).headers["location"] == "/dev-ui/"
    assert web.get("/chat").status_code == 200
