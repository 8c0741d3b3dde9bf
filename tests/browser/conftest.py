"""Fixtures for the chat page's browser tests: a real API server and headless Chromium.

The server runs in a subprocess (``_serve.py``) on a free loopback port. The browser is
Debian's ``/usr/bin/chromium`` driven by Playwright for Python; the tests skip when either
is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
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
USER = "chat-user"
SERVER_START_S = 60.0


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """An API server with the chat page, in its own process."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def log_tail(self, chars: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def runs(self, session_id: str, app: str = APP, user: str = USER) -> list[dict[str, Any]]:
        """The active runs the server's registry holds for a session."""
        r = httpx.get(f"{self.url}/apps/{app}/users/{user}/sessions/{session_id}/runs", timeout=5)
        r.raise_for_status()
        runs: list[dict[str, Any]] = r.json()["runs"]
        return runs

    def kill(self) -> None:
        """End the server abruptly, as a crash would."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def start_server(log_dir: Path, *args: str) -> LiveServer:
    port = _free_port()
    log_path = log_dir / f"server-{port}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_serve.py"), str(port), *args],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log_path, log)
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if proc.poll() is not None:
            tail = server.log_tail()
            server.stop()
            pytest.fail(f"the test server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{server.url}/list-apps", timeout=1).status_code == 200:
                _warm_up(server.url)
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            tail = server.log_tail()
            server.stop()
            pytest.fail(f"the test server did not start in {SERVER_START_S:.0f} s:\n{tail}")
        time.sleep(0.1)


def _warm_up(url: str) -> None:
    """One quick run, so that ADK loads the agent (which blocks its event loop for a while)
    before a test times anything."""
    session = httpx.post(f"{url}/apps/{APP}/users/warm-up/sessions", json={}, timeout=30)
    session.raise_for_status()
    run = httpx.post(
        f"{url}/run",
        json={
            "appName": APP,
            "userId": "warm-up",
            "sessionId": session.json()["id"],
            "newMessage": {"role": "user", "parts": [{"text": "quick"}]},
        },
        timeout=30,
    )
    run.raise_for_status()


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
def server(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the session (started after the browser check, so a skip is cheap)."""
    live = start_server(tmp_path_factory.mktemp("server"))
    yield live
    live.stop()


@pytest.fixture
def fresh_server(browser: Browser, tmp_path: Path) -> Iterator[LiveServer]:
    """A server of the test's own, which the test may stop."""
    live = start_server(tmp_path)
    yield live
    live.stop()


@pytest.fixture
def plain_adk_server(browser: Browser, tmp_path: Path) -> Iterator[LiveServer]:
    """ADK's own server with the chat page but without adk-cancel."""
    live = start_server(tmp_path, "plain")
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
