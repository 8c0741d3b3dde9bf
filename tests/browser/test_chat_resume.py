"""The chat page's answers outlive the page: a reload mid-answer shows the answer so far and
streams it to its end; Stop works after a reload; a lost connection is rejoined."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from adk_cancel.testing import ServerProcess, free_port

pytest.importorskip(
    "playwright.sync_api",
    reason="browser tests need the playwright Python package (pip install playwright)",
)
from playwright.sync_api import Page, expect

from .test_chat_page import (
    AGENT,
    open_chat,
    runs,
    send,
    session_id,
    stop_and_check,
    wait_for_streamed_text,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def words(n: int) -> str:
    return " ".join(f"word{i}" for i in range(n))


def answer_text(page: Page, index: int) -> str:
    texts = page.locator(AGENT).nth(index).get_by_test_id("agent-text").all_inner_texts()
    return "".join(texts)


def test_a_reload_mid_answer_shows_it_so_far_and_streams_it_to_the_end(
    page: Page, server: ServerProcess
) -> None:
    open_chat(page, server)
    send(page, "quick hello")  # an earlier turn, which the reload must show too
    expect(page.locator(AGENT).first).to_have_attribute("data-state", "done")
    send(page, "words 50")  # 50 words, 0.1 s apart
    wait_for_streamed_text(page, 1, min_chars=30)
    sid = session_id(page)
    before = answer_text(page, 1)
    [run] = runs(server, sid)
    assert run["on_disconnect"] == "continue"

    page.reload()
    # Same session, its history, and the answer in progress: the text so far at once, then on.
    expect(page.get_by_test_id("session-label")).to_have_attribute("data-session-id", sid)
    expect(page.get_by_test_id("user-text")).to_have_text(["quick hello", "words 50"])
    expect(page.locator(AGENT)).to_have_count(2)
    expect(page.locator(AGENT).first.get_by_test_id("agent-text")).to_have_text(
        "Here is a quick answer."
    )
    answer = page.locator(AGENT).nth(1)
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(page.get_by_test_id("send-button")).to_have_text("Stop")
    page.wait_for_function(
        """([sel, n]) => {
             const m = document.querySelectorAll(sel)[1];
             return m && [...m.querySelectorAll("[data-testid=agent-text]")]
               .map((t) => t.textContent).join("").length > n;
           }""",
        arg=[AGENT, len(before)],
    )
    assert answer_text(page, 1).startswith(before.strip())
    expect(answer).to_have_attribute("data-state", "done", timeout=15_000)
    # The whole answer, once: nothing missed, nothing twice.
    expect(answer.get_by_test_id("agent-text")).to_have_text(words(50))
    expect(page.get_by_test_id("error")).to_be_hidden()
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    assert runs(server, sid) == []

    # The conversation goes on in the same session.
    send(page, "quick again")
    expect(page.locator(AGENT).nth(2)).to_have_attribute("data-state", "done")
    assert session_id(page) == sid


def test_stop_after_a_reload_stops_the_run(page: Page, server: ServerProcess) -> None:
    open_chat(page, server)
    send(page, "words 80")
    wait_for_streamed_text(page, 0, min_chars=20)
    sid = session_id(page)
    page.reload()
    expect(page.locator(AGENT).first).to_have_attribute("data-state", "streaming")
    wait_for_streamed_text(page, 0, min_chars=40)
    stop_and_check(page, server, 0, press=None)
    assert session_id(page) == sid


class CuttingProxy:
    """A TCP proxy in front of the server that can cut every connection through it at once,
    as a load balancer dropping connections, or a network switch, does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


def test_a_lost_connection_is_rejoined_where_it_was(page: Page, server: ServerProcess) -> None:
    proxy = CuttingProxy(server.port)
    try:
        page.goto(f"{proxy.url}/chat?app=slow_agent")
        expect(page.get_by_label("Agent")).to_have_value("slow_agent")
        send(page, "words 40")
        wait_for_streamed_text(page, 0, min_chars=30)
        sid = session_id(page)
        before = answer_text(page, 0)
        with page.expect_request(lambda r: r.url.endswith("/events")) as rejoin:
            proxy.cut()  # mid-answer: the page's stream breaks, the run goes on
        # It rejoined from the last event it had, not from the start.
        assert int(rejoin.value.headers["last-event-id"]) >= 3
        answer = page.locator(AGENT).first
        expect(answer).to_have_attribute("data-state", "done", timeout=15_000)
        expect(answer.get_by_test_id("agent-text")).to_have_text(words(40))
        assert words(40).startswith(before.strip())
        expect(page.get_by_test_id("error")).to_be_hidden()
        assert runs(server, sid) == []
    finally:
        proxy.close()
