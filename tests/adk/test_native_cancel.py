"""An ADK that serves its own ``:cancel`` (the shape of ADK's open PR #5983: a route on
ADK's app before the session routes, a task registry, ``task.cancel()``): adk-cancel says
so at install, keeps the path, and answers a superset of ADK's answer; ADK's handler is
never reached."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import HTTPException
from support import until
from turns import Server as Served
from turns import assert_well_formed, new_session, start, stored

import adk_cancel
from adk_cancel.testing import serve, session_path

APP = "recording_agent"


def _with_native_cancel(calls: list[str]) -> Any:
    """The app ADK would build with PR #5983: its cancel route ahead of the session routes,
    cancelling the task it registered for the session."""
    from google.adk.cli.fast_api import get_fast_api_app
    from support import TEST_AGENTS, memory_services

    app = get_fast_api_app(
        agents_dir=str(TEST_AGENTS),
        extra_plugins=[adk_cancel.PLUGIN_PATH],
        **memory_services(),
    )
    tasks: dict[str, asyncio.Task[Any]] = {}

    @app.post("/apps/{app_name}/users/{user_id}/sessions/{session_id}:cancel")
    async def cancel_session(app_name: str, user_id: str, session_id: str) -> Any:
        calls.append(session_id)
        task = tasks.get(session_id)
        if task is None:
            raise HTTPException(404, detail=f"No active run for session {session_id}")
        task.cancel()
        return {"status": "cancelled", "session_id": session_id}

    app.router.routes.insert(0, app.router.routes.pop())
    return app


async def test_adk_s_own_cancel_is_told_apart_and_ours_answers_a_superset(
    tmp_path: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adk_cancel")
    calls: list[str] = []
    app = _with_native_cancel(calls)
    adk_cancel.install(app)
    [note] = [r.getMessage() for r in caplog.records if "its own" in r.getMessage()]
    assert "ADK serves its own /apps/{app_name}/users/{user_id}/sessions/{session_id}:cancel" in (
        note
    )
    assert all(r.levelno < logging.WARNING for r in caplog.records if r.name == "adk_cancel")
    with serve(app) as url:
        server = Served(url, app)
        sid = await new_session(http, url)
        missing = await http.post(url + session_path(sid, APP) + ":cancel", json={})
        assert missing.status_code == 404
        assert "no active run" in missing.json()["detail"].lower()

        turn = await start(http, url, "run_sse", sid, "tool 30")
        await until(lambda: _in_tool(server, sid, http), what="the run waits in its tool")
        answer = await http.post(url + session_path(sid, APP) + ":cancel", json={})
        body = answer.json()
        assert answer.status_code == 200, body
        # ADK's answer is {"status": "cancelled", "session_id": ...}: ours has both.
        assert body["status"] == "cancelled" and body["session_id"] == sid
        assert body["runs"][0]["stopped_by"] == "abort"
        await turn.finished()
        assert turn.events[-1].get("errorCode") == "CANCELLED"
        assert_well_formed(await stored(server, sid, http))
    assert calls == []


async def _in_tool(server: Any, sid: str, http: httpx.AsyncClient) -> bool:
    return any(e.get_function_calls() for e in await stored(server, sid, http))
