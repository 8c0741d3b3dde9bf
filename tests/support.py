"""Helpers shared by the tests: sessions, requests, and a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
TEST_AGENTS = Path(__file__).resolve().parent / "agents"


def memory_services() -> dict[str, Any]:
    return {
        "web": False,
        "session_service_uri": "memory://",
        "artifact_service_uri": "memory://",
        "memory_service_uri": "memory://",
    }


def message(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def run_body(session_id: str, text: str, app: str = "slow_agent", user: str = "u", **extra: Any):
    return {
        "appName": app,
        "userId": user,
        "sessionId": session_id,
        "newMessage": message(text),
        **extra,
    }


def session_path(session_id: str, app: str = "slow_agent", user: str = "u") -> str:
    return f"/apps/{app}/users/{user}/sessions/{session_id}"


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_spec_version(app: Any, version: str) -> Any:
    """Advertise another ASGI HTTP spec version to the app (Starlette changes behaviour at 2.4)."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": version}}
        await app(scope, receive, send)

    return wrapped


@contextmanager
def serve(app: Any, *, spec_version: str | None = None) -> Iterator[str]:
    """Run ``app`` on a real uvicorn server in a thread; yields its base URL."""
    port = free_port()
    asgi = with_spec_version(app, spec_version) if spec_version else app
    config = uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    # Named after its port, so a benchmark can read this thread's CPU time.
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve()), daemon=True, name=f"uvicorn:{port}"
    )
    thread.start()
    wait_until(lambda: server.started, timeout=20)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not stop"


def build_app(agents_dir: str = str(SAMPLES), **kwargs: Any) -> Any:
    import adk_cancel

    return adk_cancel.get_fast_api_app(agents_dir=agents_dir, **{**memory_services(), **kwargs})
