"""Cancel with rollback: once the run has stopped, its session is rewound with ADK's own
``Runner.rewind_async`` to before the run's message: the model's next prompt, the session's
state (the state given at creation included: ADK #4933) and its artifacts are as before. On
each route, on a memory and a SQLite store; and what the answer says when it cannot."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from google.adk.cli.service_registry import get_service_registry
from google.adk.errors import StaleSessionError
from google.adk.sessions.sqlite_session_service import SqliteSessionService
from support import TEST_AGENTS, observed_of, session_path, until, wait_until
from turns import (
    ROUTES,
    Server,
    assert_well_formed,
    cancel,
    kept,
    new_session,
    noted,
    prompts,
    runs,
    said,
    serve_app,
    session,
    start,
    stored,
    user_texts,
)

from adk_cancel.cli import main as cli

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from serve_app(tmp_path_factory.mktemp(request.param), request.param)


async def artifacts(http: httpx.AsyncClient, server: Server, sid: str) -> list[str]:
    answer = await http.get(server.url + session_path(sid, "recording_agent") + "/artifacts")
    assert answer.status_code == 200, answer.text
    return list(answer.json())


async def in_the_tool(http: httpx.AsyncClient, server: Server, route: str, sid: str) -> Any:
    """A turn whose message sets state (live: no state with a message) and whose tool saves
    an artifact, bumps a state key, then waits: stopped inside its tool."""
    delta = None if route == "run_live" else {"mood": "curious"}
    turn = await start(http, server.url, route, sid, "tool 30", state_delta=delta)
    await until(lambda: noted("tool_started", sid), what="in the tool")
    assert await artifacts(http, server, sid) == ["lookup.txt"]
    return turn


@pytest.mark.parametrize("route", ROUTES)
async def test_rollback_undoes_the_turn_on_every_route(
    server: Server, http: httpx.AsyncClient, observed: Any, route: str
) -> None:
    sid = await new_session(http, server.url, state={"topic": "cats"})
    done = await (await start(http, server.url, "run", sid, "quick")).finished()
    assert done.status == 200
    turn = await in_the_tool(http, server, route, sid)
    if route != "run_live":
        assert (await session(server, sid, http)).state["mood"] == "curious"

    answer = await cancel(http, server.url, sid, action="rollback", reason="undo")
    [run] = answer["runs"]
    assert run["stopped"] and run["rolled_back"] is True and run["rollback_error"] is None
    await turn.finished()
    if route == "run_live":
        assert turn.close_code == 4000 and turn.close_reason == "cancelled: undo"
    else:
        assert turn.cancelled is not None and turn.cancelled["reason"] == "undo"
    assert await runs(http, server.url, sid) == []

    events = await stored(server, sid, http)
    assert_well_formed(events)  # the rolled-back turn was sealed before it was hidden
    assert not kept(events)
    assert user_texts(events) == ["quick", "tool 30"], "ADK keeps the history, hidden"
    state = (await session(server, sid, http)).state
    assert state["topic"] == "cats", "the state given at creation survives (ADK #4933)"
    assert state.get("mood") is None and state.get("lookups") is None
    assert await artifacts(http, server, sid) == []

    # The model's next prompt holds the turns before, and nothing of the rolled-back one.
    assert (
        await (await start(http, server.url, "run", sid, "quick again")).finished()
    ).status == 200
    assert said(prompts(sid)[-1]) == [
        ("user", "quick"),
        ("model", "Here is a quick answer."),
        ("user", "quick again"),
    ]


async def test_a_second_rollback_goes_back_one_more_turn(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, server.url, state={"topic": "cats"})
    for text in ("first", "second"):
        turn = await start(http, server.url, "run_sse", sid, f"tool 30 {text}")
        await until(lambda t=text: _asked(sid, f"tool 30 {t}"), what=f"{text} in its tool")
        [run] = (await cancel(http, server.url, sid, action="rollback"))["runs"]
        assert run["rolled_back"] is True
        await turn.finished()
    state = (await session(server, sid, http)).state
    assert state["topic"] == "cats"
    assert (await (await start(http, server.url, "run", sid, "quick")).finished()).status == 200
    assert said(prompts(sid)[-1]) == [("user", "quick")]
    assert_well_formed(await stored(server, sid, http))


def _asked(sid: str, text: str) -> bool:
    return any(("user", text) in said(p) for p in prompts(sid)) and bool(noted("tool_started", sid))


async def test_a_queued_run_has_nothing_to_roll_back(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, server.url)
    first = await start(http, server.url, "run", sid, "tool 30", policy="enqueue")
    await until(lambda: noted("tool_started", sid), what="in the tool")
    second = await start(http, server.url, "run_sse", sid, "later", policy="enqueue")
    await until(lambda: _listed(http, server, sid, 2), what="queued")
    queued = [r for r in await runs(http, server.url, sid) if r["status"] == "queued"]
    answer = await cancel(http, server.url, sid, run_id=queued[0]["run_id"], action="rollback")
    [run] = answer["runs"]
    assert run["stopped_by"] == "queued" and run["rolled_back"] is False
    assert run["rollback_error"].startswith("nothing to roll back")
    await second.finished()
    await cancel(http, server.url, sid)
    await first.finished()
    assert "later" not in user_texts(await stored(server, sid, http))


async def _listed(http: httpx.AsyncClient, server: Server, sid: str, n: int) -> bool:
    return len(await runs(http, server.url, sid)) == n


async def test_the_cli_cancels_with_rollback(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, server.url)
    turn = await start(http, server.url, "run_sse", sid, "tool 30")
    await until(lambda: noted("tool_started", sid), what="in the tool")
    args = ["cancel", "--url", server.url, "--app", "recording_agent", "--user", "u"]
    result = await _invoke([*args, "--session", sid, "--action", "rollback"])
    assert result.exit_code == 0, result.output
    assert '"rolled_back": true' in result.output
    await turn.finished()
    bad = await _invoke([*args, "--session", sid, "--action", "undo"])
    assert bad.exit_code == 2 and "'undo' is not one of 'interrupt', 'rollback'" in bad.output


async def _invoke(args: list[str]) -> Any:
    import asyncio

    return await asyncio.to_thread(CliRunner().invoke, cli, args)


class _RewindRefused(SqliteSessionService):
    """A SQLite store that refuses every rewind, as a store whose writes keep going stale
    would."""

    async def append_event(self, session: Any, event: Any) -> Any:
        if event.actions.rewind_before_invocation_id:
            raise StaleSessionError("The session has been modified by another writer.")
        return await super().append_event(session, event)


@pytest.fixture
def refusing(tmp_path: Path) -> Iterator[Server]:
    db = tmp_path / "sessions.db"
    service = _RewindRefused(str(db))
    get_service_registry().register_session_service("rewindrefused", lambda uri, **kw: service)
    yield from serve_app(tmp_path, "sqlite", session_service_uri="rewindrefused://")


async def test_a_rewind_that_fails_leaves_the_turn_interrupted_and_sealed(
    refusing: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    server = refusing
    sid = await new_session(http, server.url)
    turn = await in_the_tool(http, server, "run_sse", sid)
    [run] = (await cancel(http, server.url, sid, action="rollback"))["runs"]
    assert run["rolled_back"] is False
    assert run["rollback_error"].startswith("the rewind failed (StaleSessionError")
    assert "left interrupted and sealed" in run["rollback_error"]
    await turn.finished()
    events = await stored(server, sid, http)
    assert_well_formed(events)
    assert [e.error_code for e in events] == [None, None, "INVOCATION_ABORTED"]
    assert (await (await start(http, server.url, "run", sid, "quick")).finished()).status == 200


def test_rollback_without_adks_web_server_uses_a_runner_of_the_runs_own(
    observed: list[Any],
) -> None:
    """An app adk-cancel cannot find ADK's web server in (the middleware added by hand, the
    plugin through ``extra_plugins``): the rewind runs on a runner of the run's own agent and
    services. Triggered by a busy policy, as no :cancel route is installed."""
    from fastapi.testclient import TestClient
    from google.adk.cli.fast_api import get_fast_api_app
    from support import memory_services, run_body

    import adk_cancel

    app = get_fast_api_app(
        agents_dir=str(TEST_AGENTS), extra_plugins=[adk_cancel.PLUGIN_PATH], **memory_services()
    )
    registry = adk_cancel.RunRegistry(adk_cancel.CancelOptions(on_busy="rollback"))
    app.add_middleware(adk_cancel.CancelMiddleware, registry=registry)
    with TestClient(app) as client:
        path = "/apps/recording_agent/users/u/sessions"
        sid = client.post(path, json={"state": {"topic": "cats"}}).json()["id"]
        thread = threading.Thread(
            target=lambda: client.post(
                "/run", json=run_body(sid, "tool 30", app="recording_agent")
            ),
            daemon=True,
        )
        thread.start()
        wait_until(lambda: observed_of(observed, sid, "tool_started"))
        answer = client.post("/run", json=run_body(sid, "quick", app="recording_agent"))
        assert answer.status_code == 200, answer.text
        [replaced] = json.loads(answer.headers["x-adk-replaced"])
        assert replaced["rolled_back"] is True, replaced
        thread.join(5)
        session = client.get(f"{path}/{sid}").json()
        rewinds = [e for e in session["events"] if e["actions"].get("rewindBeforeInvocationId")]
        assert [r["actions"]["rewindBeforeInvocationId"] for r in rewinds] == [
            replaced["invocation_id"]
        ]
        assert session["state"]["topic"] == "cats"
