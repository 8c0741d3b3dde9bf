"""The chat page in a real browser against a real server: stream, Stop, Esc, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from adk_cancel.testing import ServerProcess, session_path

pytest.importorskip(
    "playwright.sync_api",
    reason="browser tests need the playwright Python package (pip install playwright)",
)
from playwright.sync_api import Page, Route, expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

APP = "slow_agent"
USER = "chat-user"  # the page's default user
STOP_WITHIN_S = 1.0
AGENT = "[data-testid=message-agent]"


def runs(server: ServerProcess, session_id: str, app: str = APP) -> list[dict[str, Any]]:
    """The active runs the server's registry holds for a session."""
    r = httpx.get(server.url + session_path(session_id, app, USER) + "/runs", timeout=5)
    r.raise_for_status()
    listed: list[dict[str, Any]] = r.json()["runs"]
    return listed


def open_chat(page: Page, server: ServerProcess) -> None:
    page.goto(f"{server.url}/chat?app={APP}")
    expect(page.get_by_label("Agent")).to_have_value(APP)
    expect(page.get_by_test_id("send-button")).to_have_text("Send")


def send(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def wait_for_streamed_text(page: Page, index: int, min_chars: int = 20) -> None:
    """Wait until the index-th answer, still streaming, shows min_chars of text."""
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


def stop_and_check(page: Page, server: ServerProcess, index: int, press: str | None) -> str:
    """Stop the running answer (Stop button, or a key) and check everything a stop promises.

    Returns the partial text that stays on the page.
    """
    answer = page.locator(AGENT).nth(index)
    button = page.get_by_test_id("send-button")
    expect(button).to_have_text("Stop")
    with page.expect_response(lambda r: r.url.endswith(":cancel")) as cancel:
        start = time.monotonic()
        if press:
            page.keyboard.press(press)
        else:
            button.click()
        expect(answer).to_have_attribute("data-state", "stopped", timeout=STOP_WITHIN_S * 1000)
        elapsed = time.monotonic() - start
    # Stop asked the server to cancel the run (and did not just drop the connection).
    assert cancel.value.request.method == "POST"
    assert cancel.value.status == 200
    cancelled = cancel.value.json()["runs"]
    assert [r["stopped_by"] for r in cancelled] == ["abort"], cancelled
    assert elapsed < STOP_WITHIN_S, f"the stream took {elapsed:.2f} s to end"
    expect(button).to_have_text("Send")
    # The server, not the page's fallback abort, ended the stream with its cancelled event.
    expect(answer).to_have_attribute("data-stopped-by", "server")
    expect(answer.get_by_test_id("stopped-badge")).to_have_text("Stopped")
    expect(page.get_by_test_id("status")).to_contain_text("Stopped (")
    expect(page.get_by_test_id("error")).to_be_hidden()
    assert runs(server, session_id(page)) == []

    partial = answer.get_by_test_id("agent-text").first.inner_text()
    assert len(partial) >= 20, partial
    time.sleep(0.5)  # nothing more arrives once stopped
    assert answer.get_by_test_id("agent-text").first.inner_text() == partial
    expect(page.get_by_label("Message")).to_be_editable()
    expect(page.get_by_label("Message")).to_be_focused()
    return partial


def test_stop_button_stops_a_tool_call_and_the_session_goes_on(
    page: Page, server: ServerProcess, artifacts: Path
) -> None:
    open_chat(page, server)
    # The sample streams a sentence, then calls slow_lookup, which takes 30 s.
    send(page, "Look up the opening hours of the city library, please.")
    expect(page.get_by_test_id("message-user")).to_contain_text("city library")
    answer = page.locator(AGENT).first
    expect(answer.get_by_test_id("tool-call")).to_have_text('→ slow_lookup({"seconds":30})')
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(page.get_by_label("Message")).to_be_editable()  # a new message would interrupt
    # The final event repeats the streamed sentence: it is shown once.
    expect(answer.get_by_test_id("agent-text")).to_have_text(
        "Let me think about that and look it up for you, one moment please."
    )

    stop_and_check(page, server, 0, press=None)
    shot = artifacts / "chat-stopped.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 5_000

    # The session the cancel left behind takes the next turn (the sample model refuses a
    # history with an unanswered function call).
    first_session = session_id(page)
    send(page, "quick question: are you still there?")
    second = page.locator(AGENT).nth(1)
    expect(second).to_have_attribute("data-state", "done")
    expect(second.get_by_test_id("agent-text")).to_have_text("Here is a quick answer.")
    expect(page.get_by_test_id("error")).to_be_hidden()
    assert session_id(page) == first_session
    expect(answer).to_have_attribute("data-state", "stopped")
    assert runs(server, first_session) == []
    page.screenshot(path=str(artifacts / "chat-stopped-then-answered.png"))


def test_escape_stops_streaming_text_and_keys_work(page: Page, server: ServerProcess) -> None:
    open_chat(page, server)
    box = page.get_by_label("Message")
    box.fill("words 80")  # the sample streams 80 words, 0.1 s apart
    box.press("Shift+Enter")
    box.press_sequentially("tell me a long story")
    expect(box).to_have_value("words 80\ntell me a long story")
    expect(page.get_by_test_id("message-user")).to_have_count(0)

    box.press("Enter")
    sent = page.get_by_test_id("message-user").get_by_test_id("user-text")
    expect(sent).to_have_count(1)
    assert sent.inner_text() == "words 80\ntell me a long story"
    expect(box).to_have_value("")
    wait_for_streamed_text(page, 0, min_chars=40)
    expect(box).to_be_editable()  # a new message would interrupt the answer
    stop_and_check(page, server, 0, press="Escape")


def test_http_error_detail_is_shown(page: Page, server: ServerProcess) -> None:
    open_chat(page, server)
    # An app the server does not know (as if it went away after the page loaded).
    page.evaluate(
        """() => {
             const select = document.getElementById("app-select");
             select.add(new Option("no_such_app", "no_such_app"));
             select.value = "no_such_app";
             select.dispatchEvent(new Event("change"));
           }"""
    )
    send(page, "hello?")
    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("404")  # and the server's detail:
    expect(error).to_contain_text("Agent not found: 'no_such_app'")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    # The server did not take the message: it goes back into the box, out of the transcript.
    expect(page.get_by_label("Message")).to_be_editable()
    expect(page.get_by_label("Message")).to_have_value("hello?")
    expect(page.locator(AGENT)).to_have_count(0)
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    assert runs(server, session_id(page), app="no_such_app") == []


def test_server_going_down_is_shown(page: Page, fresh_server: ServerProcess) -> None:
    open_chat(page, fresh_server)
    send(page, "words 80")
    wait_for_streamed_text(page, 0)
    fresh_server.kill()  # mid-answer
    answer = page.locator(AGENT).first
    expect(answer).to_have_attribute("data-state", "error")
    error = page.get_by_test_id("error")
    expect(error).to_contain_text("The connection to the server was lost")
    assert len(answer.get_by_test_id("agent-text").inner_text()) >= 20  # partial text stays
    expect(page.get_by_test_id("send-button")).to_have_text("Send")

    send(page, "anyone there?")
    expect(error).to_contain_text("Cannot reach the server")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    # Nothing was sent: the message stays in the box for a retry.
    expect(page.get_by_label("Message")).to_have_value("anyone there?")
    expect(page.get_by_test_id("message-user")).to_have_count(1)


def test_cancel_from_elsewhere_shows_as_stopped(page: Page, server: ServerProcess) -> None:
    open_chat(page, server)
    send(page, "words 80")
    wait_for_streamed_text(page, 0)
    # Another client (a second tab, a script) cancels the run.
    r = httpx.post(
        server.url + session_path(session_id(page), APP, USER) + ":cancel",
        json={"reason": "operator says stop"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    answer = page.locator(AGENT).first
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer).to_have_attribute("data-stopped-by", "server")
    expect(page.get_by_test_id("status")).to_contain_text("Stopped elsewhere: operator says stop")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")


CANNED_STREAM = "".join(
    f"data: {json.dumps(event)}\r\n\r\n"
    for event in [
        {"author": "bot", "partial": True, "content": {"parts": [{"text": "Hel"}]}},
        {"author": "bot", "partial": True, "content": {"parts": [{"text": "lo "}]}},
        {
            "author": "bot",
            "content": {
                "parts": [
                    {"text": "Hello"},
                    {"functionCall": {"id": "c1", "name": "lookup", "args": {"q": "x"}}},
                ]
            },
        },
        {
            "author": "bot",
            "content": {
                "parts": [{"functionResponse": {"id": "c1", "name": "lookup", "response": {}}}]
            },
        },
        {"author": "bot", "content": {"parts": [{"thought": True, "text": "hmm"}]}},
        {"error": "ValueError: the model broke"},
    ]
)


def test_stream_rendering_and_a_mid_stream_error(page: Page, server: ServerProcess) -> None:
    """Canned events (CRLF line ends): the final event does not repeat the streamed text,
    tool calls are compact lines, thoughts are hidden, a mid-stream error is shown."""
    page.route(
        "**/run_sse",
        lambda route: route.fulfill(
            status=200, content_type="text/event-stream", body=CANNED_STREAM
        ),
    )
    open_chat(page, server)
    send(page, "hi")
    answer = page.locator(AGENT).first
    expect(answer).to_have_attribute("data-state", "error")
    expect(answer.get_by_test_id("agent-text")).to_have_text(["Hello"])
    expect(answer.get_by_test_id("tool-call")).to_have_text('→ lookup({"q":"x"})')
    expect(answer.get_by_test_id("tool-result")).to_have_text("← lookup: {}")
    expect(answer.get_by_test_id("agent-error")).to_have_text("ValueError: the model broke")
    expect(answer.get_by_text("hmm")).to_have_count(0)
    expect(page.get_by_test_id("error")).to_have_text("The run failed: ValueError: the model broke")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    expect(answer.get_by_text("slow_agent")).to_have_count(0)
    expect(answer).to_contain_text("bot")
    expect(answer.get_by_test_id("typing")).to_have_count(0)


def test_stop_right_after_send(page: Page, server: ServerProcess) -> None:
    """Stop before the first token: the run still ends, and the session takes the next turn."""
    open_chat(page, server)
    page.get_by_test_id("new-session").click()
    expect(page.get_by_test_id("session-label")).to_contain_text("Session ")
    box = page.get_by_label("Message")
    box.fill("words 80")
    box.press("Enter")
    page.keyboard.press("Escape")
    answer = page.locator(AGENT).first
    # Whichever wins, the cancel (200) or the run's registration (the cancel gets a 404 and
    # the page drops the connection, which cancels the run too), the run ends.
    expect(answer).to_have_attribute("data-state", "stopped", timeout=2_000)
    expect(answer.get_by_test_id("typing")).to_have_count(0)  # no longer waiting for a token
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    expect(page.get_by_test_id("error")).to_be_hidden()
    sid = session_id(page)
    for _ in range(20):  # the server may still be unwinding a run the page aborted
        if not runs(server, sid):
            break
        time.sleep(0.05)
    assert runs(server, sid) == []

    send(page, "quick question: are you still there?")
    second = page.locator(AGENT).nth(1)
    expect(second).to_have_attribute("data-state", "done")
    expect(second.get_by_test_id("agent-text")).to_have_text("Here is a quick answer.")


def test_stop_falls_back_to_dropping_the_stream_without_adk_cancel(
    page: Page, plain_adk_server: ServerProcess
) -> None:
    """On a server without the :cancel route, Stop still ends the answer (by aborting)."""
    open_chat(page, plain_adk_server)
    send(page, "words 80")
    wait_for_streamed_text(page, 0)
    page.get_by_test_id("send-button").click()
    answer = page.locator(AGENT).first
    expect(answer).to_have_attribute("data-state", "stopped", timeout=2_000)
    expect(answer).to_have_attribute("data-stopped-by", "client")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    expect(page.get_by_test_id("error")).to_be_hidden()
    text = answer.get_by_test_id("agent-text").inner_text()
    time.sleep(0.5)
    assert answer.get_by_test_id("agent-text").inner_text() == text


def test_the_server_address_leads_to_the_chat(page: Page, server: ServerProcess) -> None:
    """A person who opens the address the server printed lands on the chat page."""
    page.goto(server.url)
    assert page.url == f"{server.url}/chat"
    expect(page.get_by_label("Agent")).to_contain_text(APP)
    expect(page.get_by_test_id("send-button")).to_have_text("Send")


def test_reading_the_prompt_shows_until_the_first_token(page: Page, server: ServerProcess) -> None:
    """A local model takes many seconds to read the prompt: the answer shows a typing
    indicator and the seconds waited, until the first token arrives."""
    held: list[Route] = []
    # Hold the request, as a slow model holds its first token; release it below.
    page.route("**/run_sse", lambda route: held.append(route))
    open_chat(page, server)
    send(page, "words 5")
    answer = page.locator(AGENT).first
    typing = answer.get_by_test_id("typing")
    expect(typing).to_be_visible()
    expect(typing).to_contain_text("Reading the prompt")
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(answer).to_have_attribute("aria-busy", "true")
    # The seconds count up while nothing has arrived.
    expect(typing.get_by_test_id("typing-elapsed")).to_have_text("2 s", timeout=4_000)
    expect(answer.get_by_test_id("agent-text")).to_have_count(0)
    expect(page.get_by_test_id("send-button")).to_have_text("Stop")
    assert len(held) == 1

    held[0].continue_()
    wait_for_streamed_text(page, 0, min_chars=1)  # the first token
    expect(typing).to_have_count(0)
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.get_by_test_id("agent-text")).to_have_text("word0 word1 word2 word3 word4")
    expect(typing).to_have_count(0)


RECORD_TRANSCRIPT = """() => {
  window.seenInTranscript = [];
  new MutationObserver((records) => {
    for (const record of records) {
      for (const [sign, nodes] of [["+", record.addedNodes], ["-", record.removedNodes]]) {
        for (const node of nodes) {
          if (node.dataset?.testid) window.seenInTranscript.push(sign + node.dataset.testid);
        }
      }
    }
  }).observe(document.getElementById("transcript"), { childList: true, subtree: true });
}"""


def test_reading_the_prompt_shows_again_after_a_tool_result(
    page: Page, server: ServerProcess
) -> None:
    """After a tool answers, the model reads the prompt again: the indicator comes back
    until its next token, and goes for good when the run is done."""
    open_chat(page, server)
    page.evaluate(RECORD_TRANSCRIPT)
    send(page, "tool 1")  # a short sentence, a 1 s tool call, then "The lookup is done."
    answer = page.locator(AGENT).first
    expect(answer).to_have_attribute("data-state", "done", timeout=10_000)
    expect(answer.get_by_test_id("agent-text")).to_have_text(
        ["Looking it up.", "The lookup is done."]
    )
    seen = [
        change
        for change in page.evaluate("window.seenInTranscript")
        if change.endswith(("typing", "agent-text", "tool-call", "tool-result"))
    ]
    assert seen == [
        "+typing",  # sent: the model reads the prompt
        "-typing",
        "+agent-text",  # "Looking it up."
        "+tool-call",
        "+tool-result",
        "+typing",  # the model reads the tool's result
        "-typing",
        "+agent-text",  # "The lookup is done."
    ], seen
