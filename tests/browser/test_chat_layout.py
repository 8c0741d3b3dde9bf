"""The chat page on a phone's width, and a load that logs no console error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adk_cancel.testing import ServerProcess

pytest.importorskip(
    "playwright.sync_api",
    reason="browser tests need the playwright Python package (pip install playwright)",
)
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, expect

from .test_chat_page import AGENT, open_chat, send, wait_for_streamed_text

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

PHONE = {"width": 390, "height": 844}  # an iPhone 12 to 15's CSS pixels

RECTS = """() => Object.fromEntries(["message", "send", "undo"].map((id) => {
    const r = document.getElementById(id).getBoundingClientRect();
    return [id, {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width}];
}))"""


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["left"] < b["right"]
        and b["left"] < a["right"]
        and (a["top"] < b["bottom"] and b["top"] < a["bottom"])
    )


def test_at_390_px_the_message_box_keeps_half_the_width(
    phone: Page, server: ServerProcess, artifacts: Path
) -> None:
    open_chat(phone, server)
    idle = phone.evaluate(RECTS)
    assert idle["message"]["width"] >= PHONE["width"] / 2, idle

    send(phone, "words 80")
    wait_for_streamed_text(phone, 0)
    expect(phone.get_by_test_id("undo-button")).to_be_visible()
    rects = phone.evaluate(RECTS)
    shot = artifacts / "chat-390px-running.png"
    phone.screenshot(path=str(shot))
    assert shot.stat().st_size > 5_000
    # The box keeps at least half the width while Stop and "Stop and undo" show; nothing
    # leaves the screen or covers anything else.
    assert rects["message"]["width"] >= PHONE["width"] / 2, rects
    for name, r in rects.items():
        assert 0 <= r["left"] and r["right"] <= PHONE["width"], (name, rects)
    assert not overlap(rects["message"], rects["send"]), rects
    assert not overlap(rects["message"], rects["undo"]), rects
    assert not overlap(rects["send"], rects["undo"]), rects
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    phone.get_by_test_id("send-button").click()
    expect(phone.locator(AGENT).first).to_have_attribute("data-state", "stopped")


def test_loading_the_page_logs_no_console_error(page: Page, server: ServerProcess) -> None:
    errors: list[str] = []
    failed: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    def on_response(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    page.on("response", on_response)
    open_chat(page, server)
    page.wait_for_load_state("networkidle")
    # The browser asks for /favicon.ico on its own once the page has loaded, unseen by
    # Playwright's network events: a 404 shows as a console error (here within a few ms of
    # the load). Absence can only be waited for: a generous while.
    page.wait_for_timeout(1500)
    assert errors == [] and failed == []
