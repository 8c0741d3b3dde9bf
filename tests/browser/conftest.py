"""Fixtures for the chat page's browser tests: a real API server and headless Chromium.

The server is ``adk-cancel api_server samples/ --chat`` in a child process
(``adk_cancel.testing.ServerProcess``, as everywhere in the tests). The browser is Debian's
``/usr/bin/chromium`` driven by Playwright for Python; the tests skip when either is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from support import ROOT, SAMPLES

from adk_cancel.chat import render_chat_page
from adk_cancel.testing import ServerProcess, run_body

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHAT_TEST_CHROMIUM", "/usr/bin/chromium")  # Debian's chromium
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
APP = "slow_agent"
SERVER_START_S = 90.0
MEMORY_SERVICES = (
    "--session_service_uri", "memory://",
    "--artifact_service_uri", "memory://",
    "--memory_service_uri", "memory://",
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the chat page in headless Chromium")


def _missing_browser_tools() -> list[str]:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(
            f"Chromium at {CHROMIUM} (apt-get install chromium, or set CHAT_TEST_CHROMIUM)"
        )
    return missing


def start_server(log_dir: Path, *, plain: bool = False) -> ServerProcess:
    """``adk-cancel api_server samples/ --chat`` (with ``plain``: ADK's own ``adk
    api_server``, no cancellation and no chat page), started and warmed up."""
    args = MEMORY_SERVICES if plain else (*MEMORY_SERVICES, "--chat")
    server = ServerProcess(SAMPLES, *args, log_path=log_dir / "server.log", plain=plain)
    server.start(timeout_s=SERVER_START_S)
    try:
        _warm_up(server.url)
    except BaseException:
        server.stop()
        raise
    return server


def _warm_up(url: str) -> None:
    """One quick run, so that ADK loads the agent (which blocks its event loop for a while)
    before a test times anything."""
    session = httpx.post(f"{url}/apps/{APP}/users/warm-up/sessions", json={}, timeout=30)
    session.raise_for_status()
    body = run_body(session.json()["id"], "quick", app=APP, user="warm-up")
    httpx.post(f"{url}/run", json=body, timeout=30).raise_for_status()


# Package scope, not session: sync Playwright keeps an event loop running in this thread
# until it stops, and pytest-asyncio tests collected after this folder could not start theirs.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    missing = _missing_browser_tools()
    if missing:
        pytest.skip("browser tests need " + " and ".join(missing))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="package")
def server(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the package (started after the browser check, so a skip is cheap)."""
    live = start_server(tmp_path_factory.mktemp("server"))
    yield live
    live.stop()


@pytest.fixture
def fresh_server(browser: Browser, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, which the test may stop."""
    live = start_server(tmp_path)
    yield live
    live.stop()


@pytest.fixture
def plain_adk_server(page: Page, tmp_path: Path) -> Iterator[ServerProcess]:
    """ADK's own server, without adk-cancel; the page's ``/chat`` comes from the browser
    (the same page ``adk_cancel.chat`` serves), so it talks to ADK's routes alone."""
    live = start_server(tmp_path, plain=True)

    def chat_page(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body=render_chat_page())

    page.route(f"{live.url}/chat*", chat_page)
    yield live
    live.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 900, "height": 600})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
