"""The chat page's conversation control in a real browser: a message sent while an answer
runs interrupts it (the words shown stay, marked, and the server keeps them too), and "Stop
and undo" takes the turn back, the message returning to the box for editing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from adk_cancel.testing import ServerProcess, session_path, unanswered_calls

pytest.importorskip(
    "playwright.sync_api",
    reason="browser tests need the playwright Python package (pip install playwright)",
)
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

APP = "slow_agent"
USER = "chat-user"
AGENT = "[data-testid=message-agent]"
USER_MESSAGE = "[data-testid=message-user]"


def open_chat(page: Page, server: ServerProcess) -> None:
    page.goto(f"{server.url}/chat?app={APP}")
    expect(page.get_by_label("Agent")).to_have_value(APP)
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    expect(page.get_by_test_id("undo-button")).to_be_hidden()


def send(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def streamed(page: Page, index: int, min_chars: int = 20) -> None:
    page.wait_for_function(
        """([sel, i, n]) => {
             const m = document.querySelectorAll(sel)[i];
             const text = m ? [...m.querySelectorAll("[data-testid=agent-text]")] : [];
             return m && m.dataset.state === "streaming"
               && text.map((t) => t.textContent).join("").length >= n;
           }""",
        arg=[AGENT, index, min_chars],
    )


def session_id(page: Page) -> str:
    sid = page.get_by_test_id("session-label").get_attribute("data-session-id")
    assert sid
    return sid


def stored(server: ServerProcess, sid: str) -> dict[str, Any]:
    r = httpx.get(server.url + session_path(sid, APP, USER), timeout=5)
    r.raise_for_status()
    return dict(r.json())


def runs(server: ServerProcess, sid: str) -> list[dict[str, Any]]:
    r = httpx.get(server.url + session_path(sid, APP, USER) + "/runs", timeout=5)
    r.raise_for_status()
    return list(r.json()["runs"])


def test_a_message_sent_while_an_answer_runs_interrupts_it(
    page: Page, server: ServerProcess
) -> None:
    open_chat(page, server)
    send(page, "words 80")
    streamed(page, 0)
    box = page.get_by_label("Message")
    expect(box).to_be_editable()
    expect(page.get_by_test_id("undo-button")).to_be_visible()

    with page.expect_request(lambda r: r.url.endswith("/run_sse")) as second:
        send(page, "quick question instead")
    assert second.value.headers["x-adk-on-busy"] == "interrupt"

    first = page.locator(AGENT).first
    expect(first).to_have_attribute("data-state", "stopped")
    expect(first).to_have_attribute("data-stopped-by", "server")
    expect(first.get_by_test_id("stopped-badge")).to_have_text("Interrupted")
    expect(first.get_by_test_id("interrupted-note")).to_contain_text("Interrupted by your next")
    shown = first.get_by_test_id("agent-text").first.inner_text()
    assert shown.startswith("word0 word1"), shown

    answer = page.locator(AGENT).nth(1)
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.get_by_test_id("agent-text")).to_have_text("Here is a quick answer.")
    expect(page.get_by_test_id("status")).to_contain_text("Interrupted the previous answer")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    expect(page.get_by_test_id("undo-button")).to_be_hidden()
    expect(page.get_by_test_id("error")).to_be_hidden()
    expect(page.locator(USER_MESSAGE)).to_have_count(2)

    # A reload would show what the user saw: the server kept the interrupted words.
    sid = session_id(page)
    events = stored(server, sid)["events"]
    kept = [e for e in events if e.get("interrupted")]
    assert [e["content"]["parts"][0]["text"].strip() for e in kept] == [shown.strip()]
    assert unanswered_calls(events) == [] and runs(server, sid) == []


def test_stop_and_undo_takes_the_turn_back_for_editing(page: Page, server: ServerProcess) -> None:
    open_chat(page, server)
    send(page, "quick")
    expect(page.locator(AGENT).first).to_have_attribute("data-state", "done")

    # The sample streams a sentence, then waits 30 s in its tool.
    send(page, "Look up the opening hours of the city library, please.")
    turn = page.locator(AGENT).nth(1)
    expect(turn.get_by_test_id("tool-call")).to_have_text('→ slow_lookup({"seconds":30})')
    with page.expect_response(lambda r: r.url.endswith(":cancel")) as cancel:
        page.get_by_test_id("undo-button").click()
    assert cancel.value.request.post_data_json["action"] == "rollback"
    [run] = cancel.value.json()["runs"]
    assert run["rolled_back"] is True, run

    box = page.get_by_label("Message")
    expect(box).to_have_value("Look up the opening hours of the city library, please.")
    expect(box).to_be_focused()
    expect(page.locator(USER_MESSAGE)).to_have_count(1)
    expect(page.locator(AGENT)).to_have_count(1)
    expect(page.get_by_test_id("status")).to_contain_text("Undone: your message is back")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    expect(page.get_by_test_id("error")).to_be_hidden()

    # Edited and sent again: the model sees it as if the first try never happened.
    sid = session_id(page)
    box.fill("quick question: the library's hours?")
    box.press("Enter")
    again = page.locator(AGENT).nth(1)
    expect(again).to_have_attribute("data-state", "done")
    expect(again.get_by_test_id("agent-text")).to_have_text("Here is a quick answer.")
    events = stored(server, sid)["events"]
    rewinds = [e for e in events if (e.get("actions") or {}).get("rewindBeforeInvocationId")]
    assert [r["actions"]["rewindBeforeInvocationId"] for r in rewinds] == [run["invocation_id"]]
    assert unanswered_calls(events) == [] and runs(server, sid) == []


def test_undo_on_a_server_without_adk_cancel_stops_and_says_it_could_not(
    page: Page, plain_adk_server: ServerProcess
) -> None:
    open_chat(page, plain_adk_server)
    send(page, "words 80")
    streamed(page, 0)
    page.get_by_test_id("undo-button").click()
    answer = page.locator(AGENT).first
    expect(answer).to_have_attribute("data-state", "stopped", timeout=2_000)
    expect(answer).to_have_attribute("data-stopped-by", "client")
    expect(page.get_by_test_id("error")).to_contain_text(
        "Could not undo: this server cannot roll a turn back. The answer was stopped and kept."
    )
    expect(page.locator(USER_MESSAGE)).to_have_count(1)
    expect(page.get_by_label("Message")).to_have_value("")
