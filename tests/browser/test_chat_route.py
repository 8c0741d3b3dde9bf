"""The chat route itself (no browser needed)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from adk_cancel._chat import add_chat_route, render_chat_page

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
