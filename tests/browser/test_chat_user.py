"""The chat page's user id: ``chat-user`` unless the address says ``?user=``; a value that
cannot go into the session routes is said so, and nothing is sent with it."""

from __future__ import annotations

import httpx
import pytest

from adk_cancel.testing import ServerProcess, session_path

pytest.importorskip(
    "playwright.sync_api",
    reason="browser tests need the playwright Python package (pip install playwright)",
)
from playwright.sync_api import Page, Request, expect

from .test_chat_page import AGENT, APP, open_chat, send, session_id

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]


def stored_status(server: ServerProcess, sid: str, user: str) -> int:
    return httpx.get(server.url + session_path(sid, APP, user), timeout=5).status_code


def test_the_default_user_is_chat_user_and_is_shown(page: Page, server: ServerProcess) -> None:
    open_chat(page, server)
    expect(page.get_by_test_id("user-label")).to_have_text("User chat-user")
    send(page, "quick")
    expect(page.locator(AGENT).first).to_have_attribute("data-state", "done")
    assert stored_status(server, session_id(page), "chat-user") == 200


def test_the_user_comes_from_the_address(page: Page, server: ServerProcess) -> None:
    page.goto(f"{server.url}/chat?app={APP}&user=alice.smith@example-1")
    expect(page.get_by_test_id("user-label")).to_have_text("User alice.smith@example-1")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    send(page, "quick")
    expect(page.locator(AGENT).first).to_have_attribute("data-state", "done")
    sid = session_id(page)
    assert stored_status(server, sid, "alice.smith@example-1") == 200
    assert stored_status(server, sid, "chat-user") == 404
    # A reload finds the session again, as that user's.
    page.reload()
    expect(page.get_by_test_id("session-label")).to_have_attribute("data-session-id", sid)
    expect(page.get_by_test_id("user-text")).to_have_text(["quick"])


@pytest.mark.parametrize("bad", ["a%2Fb", "..", "", "with%20space", "x" * 129])
def test_a_bad_user_is_said_and_nothing_is_sent(
    page: Page, server: ServerProcess, bad: str
) -> None:
    sent: list[str] = []

    def watch(request: Request) -> None:
        if "/apps/" in request.url or request.url.endswith("/run_sse"):
            sent.append(request.url)

    page.on("request", watch)
    page.goto(f"{server.url}/chat?app={APP}&user={bad}")
    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("?user=")
    expect(error).to_contain_text("chat-user")  # what to do: the default, or a good id
    expect(page.get_by_test_id("send-button")).to_be_disabled()
    expect(page.get_by_test_id("new-session")).to_be_disabled()
    box = page.get_by_label("Message")
    expect(box).to_be_disabled()
    # Enter on the box (forced: it is disabled) and a submit of the form send nothing.
    box.evaluate("(b) => { b.disabled = false; b.value = 'quick'; }")
    box.press("Enter")
    page.evaluate("() => document.getElementById('composer').requestSubmit()")
    page.wait_for_timeout(300)
    expect(page.locator(AGENT)).to_have_count(0)
    assert sent == []
