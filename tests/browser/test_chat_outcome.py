"""The chat page shows a stopped run's outcome from the server's record of it: a deadline
("stopped: deadline exceeded after 1 s"), and its own Stop button ("stopped: user pressed Stop")."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SAMPLES

from adk_cancel.testing import ServerProcess

from .conftest import MEMORY_SERVICES, SERVER_START_S, _warm_up

pytest.importorskip(
    "playwright.sync_api",
    reason="browser tests need the playwright Python package (pip install playwright)",
)
from playwright.sync_api import Browser, Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

AGENT = "[data-testid=message-agent]"


@pytest.fixture
def deadline_server(browser: Browser, tmp_path: Path) -> Iterator[ServerProcess]:
    """``adk-cancel api_server samples/ --chat --run_timeout_s 1.5``."""
    server = ServerProcess(
        SAMPLES, *MEMORY_SERVICES, "--chat", "--run_timeout_s", "1.5",
        log_path=tmp_path / "server.log",
    )  # fmt: skip
    server.start(timeout_s=SERVER_START_S)
    try:
        _warm_up(server.url)
        yield server
    finally:
        server.stop()


def send(page: Page, server: ServerProcess, text: str) -> None:
    page.goto(f"{server.url}/chat?app=slow_agent")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def test_a_deadline_shows_as_the_runs_outcome(page: Page, deadline_server: ServerProcess) -> None:
    send(page, deadline_server, "tool 30")
    answer = page.locator(AGENT).first
    expect(answer).to_have_attribute("data-state", "stopped", timeout=5000)
    expect(answer).to_have_attribute("data-stopped-by", "server")
    outcome = answer.get_by_test_id("run-outcome")
    expect(outcome).to_have_text(
        re.compile(r"^stopped: deadline exceeded after 1\.5 s \(abort, \d+ ms\)$")
    )
    expect(outcome).to_have_attribute("data-status", "timed_out")
    # The next message in the same session works.
    page.get_by_label("Message").fill("quick")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(AGENT).nth(1)).to_have_attribute("data-state", "done")
    expect(page.locator(AGENT).nth(1).get_by_test_id("run-outcome")).to_have_count(0)


def test_the_stop_buttons_outcome(page: Page, deadline_server: ServerProcess) -> None:
    send(page, deadline_server, "words 80")
    answer = page.locator(AGENT).first
    expect(answer).to_have_attribute("data-state", "streaming")
    page.get_by_test_id("send-button").click()
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.get_by_test_id("run-outcome")).to_have_text(
        re.compile(r"^stopped: user pressed Stop \(abort, \d+ ms\)$")
    )
    expect(answer.get_by_test_id("run-outcome")).to_have_attribute("data-status", "cancelled")
