"""Helpers shared by the tests; the servers and request builders come from
``adk_cancel.testing``, which the benches use too."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.adk.sessions.sqlite_session_service import SqliteSessionService

from adk_cancel.testing import free_port, message, run_body, serve, session_path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
TEST_AGENTS = Path(__file__).resolve().parent / "agents"
"""The test agents: the slow sample agent with an observed tool, and a stubborn one."""

__all__ = [
    "ROOT",
    "SAMPLES",
    "TEST_AGENTS",
    "HeldUserWrite",
    "build_app",
    "free_port",
    "group_members",
    "memory_services",
    "message",
    "observed_of",
    "run_body",
    "serve",
    "session_path",
    "wait_until",
]


def observed_of(observed: list[dict[str, Any]], sid: str, event: str) -> list[dict[str, Any]]:
    """The test agents' records of ``event`` for session ``sid`` (of ``observed``)."""
    return [o for o in observed if o["event"] == event and o.get("session_id") == sid]


def memory_services() -> dict[str, Any]:
    return {
        "web": False,
        "session_service_uri": "memory://",
        "artifact_service_uri": "memory://",
        "memory_service_uri": "memory://",
    }


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


async def until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.005,
) -> Any:
    """Poll ``predicate`` (sync or returning an awaitable) until its value is truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout} s")
        await asyncio.sleep(interval)


class HeldUserWrite(SqliteSessionService):
    """A real SQLite store that holds the user's message write (once, after ``hold`` is set)
    until the test sets ``release``, as a store waits for a lock another writer holds; it
    sets ``held`` when the write is waiting. A cancel landing meanwhile must not cut the
    write in half, and adk-cancel's force waits for it, so ADK's own reaction to an abort
    plays out first (as on the first live run after a server start: SQLite's first write is
    slow)."""

    def __init__(self, db_path: str) -> None:
        super().__init__(db_path=db_path)
        self.hold = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()

    async def append_event(self, session: Any, event: Any) -> Any:
        if self.hold.is_set() and event.author == "user":
            self.hold.clear()
            self.held.set()
            await asyncio.to_thread(self.release.wait, 20)
        return await super().append_event(session, event)


def build_app(agents_dir: str = str(TEST_AGENTS), **kwargs: Any) -> Any:
    import adk_cancel

    return adk_cancel.get_fast_api_app(agents_dir=agents_dir, **{**memory_services(), **kwargs})


def group_members(pgid: int) -> list[str]:
    """The live (not zombie) processes of a process group, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rfind(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            found.append(f"{entry.name} ({state}) {stat[stat.find('(') : stat.rfind(')') + 1]}")
    return found
