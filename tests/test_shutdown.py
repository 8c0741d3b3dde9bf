"""Graceful shutdown of a real ``adk-cancel api_server`` process: SIGINT and SIGTERM with a
run in flight on every route, on a SQLite session store shared through Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.adk.sessions.sqlite_session_service import SqliteSessionService
from observations import EVENTS_ENV
from support import TEST_AGENTS, run_body, wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from adk_cancel.testing import RedisServer, ServerProcess, free_port, unanswered_calls

pytestmark = pytest.mark.timeout(180)

GRACE_S = 2.0  # the quick run (0.4 s) ends well within it, even on a loaded machine


def _new_session(url: str) -> str:
    return str(httpx.post(f"{url}/apps/slow_agent/users/u/sessions", json={}).json()["id"])


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # the test reads it
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _sse(url: str, sid: str) -> list[str]:
    body = run_body(sid, "tool 30", streaming=True)
    with httpx.stream("POST", url + "/run_sse", json=body, timeout=30) as response:
        return list(response.iter_lines())


def _live(url: str, sid: str) -> tuple[int | None, str | None]:
    ws_url = url.replace("http", "ws", 1)
    with connect(f"{ws_url}/run_live?app_name=slow_agent&user_id=u&session_id={sid}") as ws:
        ws.send(json.dumps({"content": {"role": "user", "parts": [{"text": "tool 30"}]}}))
        try:
            while True:
                ws.recv(timeout=30)
        except ConnectionClosed as closed:
            return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, None)


def _stored_unanswered(db: Path, sid: str) -> list[Any]:
    async def read() -> list[Any]:
        session = await SqliteSessionService(db_path=str(db)).get_session(
            app_name="slow_agent", user_id="u", session_id=sid
        )
        assert session is not None
        return unanswered_calls(session.events)

    return asyncio.run(read())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_lets_runs_finish_then_cancels_the_rest_and_exits_0(
    tmp_path: Path, signum: int
) -> None:
    import redis

    db = tmp_path / "sessions.db"
    events = tmp_path / "events.jsonl"
    events.write_text("")
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    with RedisServer(free_port(), tmp_path) as redis_server:
        server = ServerProcess(
            TEST_AGENTS,
            "--session_service_uri", f"sqlite:///{db}",
            "--cancel_backend", f"{redis_server.url}?key_prefix={prefix}",
            "--shutdown_grace_s", str(GRACE_S),
            "--no_chat",
            log_path=tmp_path / "server.log",
            env={EVENTS_ENV: str(events)},
        )  # fmt: skip
        server.start()
        try:
            url = server.url
            sids = {route: _new_session(url) for route in ("run", "run_sse", "run_live", "quick")}
            runs = {
                "run": _in_thread(
                    lambda: httpx.post(
                        url + "/run", json=run_body(sids["run"], "tool 30"), timeout=30
                    )
                ),
                "run_sse": _in_thread(lambda: _sse(url, sids["run_sse"])),
                "run_live": _in_thread(lambda: _live(url, sids["run_live"])),
            }
            for route in ("run", "run_sse", "run_live"):
                wait_until(lambda r=route: sids[r] in events.read_text(), timeout=20)
            # A run that ends within the grace period is let finish.
            runs["quick"] = _in_thread(
                lambda: httpx.post(
                    url + "/run", json=run_body(sids["quick"], "words 4"), timeout=30
                )
            )
            wait_until(
                lambda: httpx.get(
                    f"{url}/apps/slow_agent/users/u/sessions/{sids['quick']}/runs"
                ).json()["runs"]
            )

            signalled = time.monotonic()
            server.send_signal(signum)
            # While runs drain, a new run is refused, and says why.

            def refused_run() -> httpx.Response | None:
                answer = httpx.post(url + "/run", json=run_body("any", "quick"), timeout=10)
                # A 404 (no session "any") is ADK's answer: the signal was not handled yet.
                return None if answer.status_code == 404 else answer

            refused = wait_until(refused_run)
            assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
            code = server.wait(timeout_s=GRACE_S + 15)
            took = time.monotonic() - signalled
        finally:
            server.kill()
        log = server.log()
        assert code == 0, log
        assert took < GRACE_S + 2, f"exited {took:.2f} s after the signal"
        assert "Traceback" not in log and "Aborted!" not in log, log

        for thread, _ in runs.values():
            thread.join(10)
        outcome = {route: out.get("value", out.get("error")) for route, (_, out) in runs.items()}
        ran = outcome["run"]
        assert ran.status_code == 200 and ran.headers["x-adk-cancel"] == "cancelled"
        assert ran.headers["x-adk-cancel-reason"] == "server shutting down"
        lines = outcome["run_sse"]
        assert "event: cancelled" in lines, lines
        final = json.loads(lines[lines.index("event: cancelled") + 1][len("data: ") :])
        assert final["cancelled"]["reason"] == "server shutting down"
        assert outcome["run_live"] == (4000, "cancelled: server shutting down")
        quick = outcome["quick"]
        assert quick.status_code == 200 and "x-adk-cancel" not in quick.headers
        assert quick.json()[-1]["content"]["parts"][0]["text"].endswith("word3")

        for sid in sids.values():
            assert _stored_unanswered(db, sid) == []
        # A clean shutdown leaves nothing that lists the worker: only each run's record, which
        # it wrote on its way out (and which expires).
        store = redis.Redis.from_url(redis_server.url)
        records = {route: f"{prefix}:records:slow_agent/u/{sid}" for route, sid in sids.items()}
        left = sorted(store.keys(f"{prefix}*"))
        assert left == sorted(key.encode() for key in records.values()), left
        assert all(store.pttl(key) > 0 for key in left)
        ended = {route: json.loads(store.lindex(key, 0) or "{}") for route, key in records.items()}
        assert {route: (r["status"], r["cancelled_by"]) for route, r in ended.items()} == {
            "run": ("cancelled", "shutdown"),
            "run_sse": ("cancelled", "shutdown"),
            "run_live": ("cancelled", "shutdown"),
            "quick": ("finished", None),
        }


def test_an_app_started_again_after_its_shutdown_takes_runs() -> None:
    from fastapi.testclient import TestClient
    from support import build_app

    app = build_app()
    for _ in range(2):
        with TestClient(app) as client:
            sid = _new_session_on(client)
            answer = client.post("/run", json=run_body(sid, "quick"))
            assert answer.status_code == 200, answer.text


def _new_session_on(client: Any) -> str:
    return str(client.post("/apps/slow_agent/users/u/sessions", json={}).json()["id"])
