"""After a reload the chat page rebuilds its transcript from the stored session: it must be
the transcript the page showed live. A turn taken back with "Stop and undo" stays gone (ADK
keeps its events, hidden by a rewind event), an interrupted answer keeps its label and note,
and a stopped answer keeps its outcome line from the run's record."""

from __future__ import annotations

import re
from typing import Any

import pytest

from adk_cancel.testing import ServerProcess

pytest.importorskip(
    "playwright.sync_api",
    reason="browser tests need the playwright Python package (pip install playwright)",
)
from playwright.sync_api import Page, expect

from .test_chat_page import AGENT, open_chat, send, session_id, wait_for_streamed_text

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

USER_MESSAGE = "[data-testid=message-user]"

# What a person reads in the transcript: per message its kind, state and author line (with
# its badge), then each line under it with its test id (texts, tool lines, notes, outcome).
TRANSCRIPT = """() => [...document.querySelectorAll("#transcript > .msg")].map((m) => ({
    kind: m.dataset.testid,
    state: m.dataset.state ?? null,
    who: m.firstElementChild.textContent,
    lines: [...m.children].slice(1).map((c) => [c.dataset.testid ?? c.className, c.textContent]),
}))"""


def transcript(page: Page) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = page.evaluate(TRANSCRIPT)
    return shown


def reload_and_read(page: Page, sid: str, answers: int) -> list[dict[str, Any]]:
    """Reload the page and read the transcript it rebuilt from the stored session."""
    page.reload()
    expect(page.get_by_test_id("session-label")).to_have_attribute("data-session-id", sid)
    expect(page.locator(AGENT).nth(answers - 1)).to_have_attribute(
        "data-state", re.compile("done|stopped")
    )
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    return transcript(page)


def test_an_undone_turn_stays_gone_after_a_reload(page: Page, server: ServerProcess) -> None:
    open_chat(page, server)
    send(page, "quick")
    expect(page.locator(AGENT).first).to_have_attribute("data-state", "done")
    send(page, "words 80")
    wait_for_streamed_text(page, 1)
    with page.expect_response(lambda r: r.url.endswith(":cancel")) as cancel:
        page.get_by_test_id("undo-button").click()
    [run] = cancel.value.json()["runs"]
    assert run["rolled_back"] is True, run
    expect(page.get_by_label("Message")).to_have_value("words 80")
    expect(page.locator(USER_MESSAGE)).to_have_count(1)
    live = transcript(page)
    assert [m["kind"] for m in live] == ["message-user", "message-agent"]

    rebuilt = reload_and_read(page, session_id(page), answers=1)
    assert rebuilt == live

    # A turn after the undo, then a reload: the undone turn is still gone, the new one there.
    send(page, "quick again")
    expect(page.locator(AGENT).nth(1)).to_have_attribute("data-state", "done")
    live = transcript(page)
    assert reload_and_read(page, session_id(page), answers=2) == live
    expect(page.get_by_test_id("user-text")).to_have_text(["quick", "quick again"])


def test_an_interrupted_answer_keeps_its_label_and_note_after_a_reload(
    page: Page, server: ServerProcess
) -> None:
    open_chat(page, server)
    send(page, "words 80")
    wait_for_streamed_text(page, 0)
    send(page, "quick question instead")
    first = page.locator(AGENT).first
    expect(first.get_by_test_id("stopped-badge")).to_have_text("Interrupted")
    expect(page.locator(AGENT).nth(1)).to_have_attribute("data-state", "done")
    live = transcript(page)
    assert live[1]["state"] == "stopped"
    assert [kind for kind, _ in live[1]["lines"]] == ["agent-text", "interrupted-note"]

    assert reload_and_read(page, session_id(page), answers=2) == live
    expect(first.get_by_test_id("interrupted-note")).to_have_text(
        "Interrupted by your next message; what it had said is kept."
    )


def test_a_stopped_answer_keeps_its_outcome_after_a_reload(
    page: Page, server: ServerProcess
) -> None:
    open_chat(page, server)
    # A stop while the sample waits in its 30 s tool, then one mid-text, then a full answer.
    send(page, "Look up the opening hours of the city library, please.")
    first = page.locator(AGENT).first
    expect(first.get_by_test_id("tool-call")).to_have_text('→ slow_lookup({"seconds":30})')
    page.get_by_test_id("send-button").click()
    outcome = re.compile(r"^stopped: user pressed Stop \(abort, \d+ ms\)$")
    expect(first.get_by_test_id("run-outcome")).to_have_text(outcome)
    send(page, "words 80")
    wait_for_streamed_text(page, 1)
    page.keyboard.press("Escape")
    expect(page.locator(AGENT).nth(1).get_by_test_id("run-outcome")).to_have_text(outcome)
    send(page, "quick")
    expect(page.locator(AGENT).nth(2)).to_have_attribute("data-state", "done")
    live = transcript(page)

    assert reload_and_read(page, session_id(page), answers=3) == live
    for stopped in (first, page.locator(AGENT).nth(1)):
        expect(stopped).to_have_attribute("data-state", "stopped")
        expect(stopped.get_by_test_id("stopped-badge")).to_have_text("Stopped")
        expect(stopped.get_by_test_id("run-outcome")).to_have_text(outcome)
        expect(stopped.get_by_test_id("run-outcome")).to_have_attribute("data-status", "cancelled")
