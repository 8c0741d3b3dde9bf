"""The busy policy on one worker: what a run does when its session already has an active
run (reject, interrupt, rollback, enqueue; allow is ADK's own behaviour), on each route, on
a memory and a SQLite session store. Real uvicorn; every outcome read back from the store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import until
from turns import (
    Server,
    assert_well_formed,
    cancel,
    close,
    kept,
    new_session,
    noted,
    prompts,
    runs,
    said,
    serve_app,
    start,
    stored,
    user_texts,
)

pytestmark = pytest.mark.timeout(90)

# (the active run's route, the new run's route): each route is both once.
PAIRS = [("run_sse", "run"), ("run_live", "run_sse"), ("run", "run_live")]


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from serve_app(tmp_path_factory.mktemp(request.param), request.param)


def leases_left(server: Server) -> int:
    """Sessions the server still holds or queues for (its memory backend's leases)."""
    return int(server.app.state.adk_cancel.backend.held())


async def active(
    http: httpx.AsyncClient, server: Server, route: str, sid: str, policy: str | None = None
) -> Any:
    """A run that streams words for 3 s (words 30); returns once its client has seen three.
    On /run, whose client sees nothing until the end, a run waiting in its tool instead."""
    if route == "run":
        turn = await start(http, server.url, route, sid, "tool 30", policy=policy)
        await until(lambda: noted("tool_started", sid), what="tool started")
    else:
        turn = await start(http, server.url, route, sid, "words 30", policy=policy)
        await until(lambda: turn.partials() >= 3 or turn.done, what="three words streamed")
    assert not turn.done
    return turn


async def settle(http: httpx.AsyncClient, server: Server, sid: str) -> None:
    await until(lambda: _empty(http, server, sid), what="no run left")
    assert leases_left(server) == 0


async def _empty(http: httpx.AsyncClient, server: Server, sid: str) -> bool:
    return await runs(http, server.url, sid) == []


@pytest.mark.parametrize("route", ["run", "run_sse", "run_live"])
async def test_reject_answers_409_naming_the_active_run_and_starts_nothing(
    server: Server, http: httpx.AsyncClient, observed: Any, route: str
) -> None:
    sid = await new_session(http, server.url)
    first = await active(http, server, "run_sse", sid)
    [listed] = await runs(http, server.url, sid)

    refused = await (await start(http, server.url, route, sid, "quick", policy="reject")).finished()
    assert refused.status == 409, refused.body
    body = refused.body
    assert body["on_busy"] == "reject" and "already has an active run" in body["detail"]
    [named] = body["runs"]
    assert named["run_id"] == listed["run_id"] and named["route"] == "run_sse"
    assert named["invocation_id"] == listed["invocation_id"] and named["elapsed_ms"] > 0
    assert len(prompts(sid)) == 1, "nothing started: the model was asked once, by the first"

    await cancel(http, server.url, sid)
    await first.finished()
    await settle(http, server, sid)
    events = await stored(server, sid, http)
    assert user_texts(events) == ["words 30"]
    assert_well_formed(events)


@pytest.mark.parametrize(("old", "new"), PAIRS)
async def test_interrupt_stops_the_active_run_then_starts(
    server: Server, http: httpx.AsyncClient, observed: Any, old: str, new: str
) -> None:
    sid = await new_session(http, server.url)
    first = await active(http, server, old, sid)
    [listed] = await runs(http, server.url, sid)

    second = await start(http, server.url, new, sid, "quick", policy="interrupt")
    await until(lambda: second.answered() or second.done, what="the new answer")
    await first.finished()
    if new == "run_live":
        await close(second)
    await second.finished()

    # The new run's client is told which run it replaced; the old one's, that it was.
    [replaced] = second.replaced
    assert replaced["run_id"] == listed["run_id"] and replaced["stopped_by"] in ("abort", "force")
    if old == "run_live":
        assert first.close_code == 4000 and "replaced by a newer run" in first.close_reason
    else:
        assert first.cancelled is not None and "replaced" in str(first.cancelled["reason"])
    assert QUICK[new] in second.answer()

    await settle(http, server, sid)
    events = await stored(server, sid, http)
    assert user_texts(events) == [first_text(old), "quick"]
    assert_well_formed(events)
    if old != "run":
        streamed = first.streamed_text()
        [words] = kept(events)
        assert streamed and words.content is not None and words.content.parts[0].text == streamed
    if new != "run_live":  # (ADK's live flow gives its model the current turn only)
        # The model's next prompt has the interrupted turn, with the words its client saw.
        last = said(prompts(sid)[-1])
        assert last[0] == ("user", first_text(old)) and last[-1] == ("user", "quick")
        if old != "run":
            assert ("model", first.streamed_text()) in last


QUICK = {"run": "quick answer", "run_sse": "quick answer", "run_live": "look that up"}


def first_text(route: str) -> str:
    return "tool 30" if route == "run" else "words 30"


@pytest.mark.parametrize(("old", "new"), PAIRS)
async def test_rollback_undoes_the_active_turn_then_starts(
    server: Server, http: httpx.AsyncClient, observed: Any, old: str, new: str
) -> None:
    sid = await new_session(http, server.url, state={"topic": "cats"})
    first = await active(http, server, old, sid)

    second = await start(http, server.url, new, sid, "quick", policy="rollback")
    await until(lambda: second.answered() or second.done, what="the new answer")
    await first.finished()
    if new == "run_live":
        await close(second)
    await second.finished()

    [replaced] = second.replaced
    assert replaced["rolled_back"] is True, replaced
    await settle(http, server, sid)
    events = await stored(server, sid, http)
    assert_well_formed(events)
    assert not kept(events), "a rollback keeps none of the undone turn"
    # The model saw the new message as if the first turn never happened.
    assert said(prompts(sid)[-1]) == [("user", "quick")]
    from turns import session

    assert (await session(server, sid, http)).state.get("topic") == "cats"


async def test_enqueue_runs_each_in_arrival_order(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, server.url)
    first = await start(http, server.url, "run_sse", sid, "words 5", policy="enqueue")
    await until(lambda: first.partials() >= 1, what="first streaming")
    queued = []
    for route, text in [("run", "words 2"), ("run_live", "quick"), ("run_sse", "words 1")]:
        turn = await start(http, server.url, route, sid, text, policy="enqueue")
        queued.append(turn)
        await until(lambda: _count(http, server, sid, len(queued) + 1), what=f"{text} listed")
    listed = await runs(http, server.url, sid)
    assert [r["status"] for r in listed] == ["running", "queued", "queued", "queued"]
    assert {r["on_busy"] for r in listed} == {"enqueue"}
    assert [r["route"] for r in listed] == ["run_sse", "run", "run_live", "run_sse"]

    await first.finished()
    await queued[0].finished()
    live = queued[1]
    await until(live.answered, what="the live answer")
    await close(live)
    await queued[2].finished()
    for turn in [first, *queued]:
        assert turn.status in (101, 200) and turn.cancelled is None and not turn.replaced

    await settle(http, server, sid)
    events = await stored(server, sid, http)
    assert user_texts(events) == ["words 5", "words 2", "quick", "words 1"]
    assert_well_formed(events)


async def _count(http: httpx.AsyncClient, server: Server, sid: str, n: int) -> bool:
    return len(await runs(http, server.url, sid)) == n


async def test_a_queued_run_is_cancelled_without_starting(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, server.url)
    first = await active(http, server, "run_sse", sid)
    waiting = {
        route: await start(http, server.url, route, sid, f"queued {route}", policy="enqueue")
        for route in ("run", "run_sse", "run_live")
    }
    await until(lambda: _count(http, server, sid, 4), what="three queued")
    for route, turn in waiting.items():
        queued = [r for r in await runs(http, server.url, sid) if r["route"] == route]
        [run] = [r for r in queued if r["status"] == "queued"]
        answer = await cancel(http, server.url, sid, run_id=run["run_id"], reason="not now")
        [outcome] = answer["runs"]
        assert outcome["stopped_by"] == "queued" and outcome["run_id"] == run["run_id"]
        await turn.finished()
        if route == "run_live":
            assert turn.close_code == 4000 and turn.close_reason == "cancelled: not now"
        else:
            assert turn.cancelled is not None and turn.cancelled["reason"] == "not now"
    assert len(await runs(http, server.url, sid)) == 1 and not first.done

    await cancel(http, server.url, sid, run_id=(await runs(http, server.url, sid))[0]["run_id"])
    await first.finished()
    await settle(http, server, sid)
    events = await stored(server, sid, http)
    assert user_texts(events) == ["words 30"], "no queued run started"
    assert len(prompts(sid)) == 1
    assert_well_formed(events)


@pytest.mark.parametrize("route", ["run", "run_sse", "run_live"])
async def test_a_client_leaving_while_queued_leaves_nothing_behind(
    server: Server, http: httpx.AsyncClient, observed: Any, route: str
) -> None:
    sid = await new_session(http, server.url)
    first = await active(http, server, "run_sse", sid)
    waiting = await start(http, server.url, route, sid, "never", policy="enqueue")
    await until(lambda: _count(http, server, sid, 2), what="queued")
    if route == "run_live":
        await until(lambda: waiting.ws is not None, what="accepted while queued")
        await close(waiting)
    else:
        assert waiting.task is not None
        waiting.task.cancel()  # the client hangs up
    await until(lambda: _count(http, server, sid, 1), what="the queued run gone")

    await cancel(http, server.url, sid)
    await first.finished()
    await settle(http, server, sid)
    events = await stored(server, sid, http)
    assert "never" not in user_texts(events)
    assert len(prompts(sid)) == 1
    assert_well_formed(events)


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[Server]:
    """A server whose runs queue by default, at most two per session."""
    yield from serve_app(tmp_path, "memory", max_queued=2, on_busy="enqueue")


async def test_the_queue_is_bounded(
    bounded: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    server = bounded
    sid = await new_session(http, server.url)
    first = await active(http, server, "run_sse", sid)
    waiting = [await start(http, server.url, "run", sid, "quick") for _ in range(2)]
    await until(lambda: _count(http, server, sid, 3), what="two queued")
    for route in ("run", "run_sse", "run_live"):
        full = await (await start(http, server.url, route, sid, "quick")).finished()
        assert full.status == 429, full.body
        assert "is full" in full.body["detail"] and "max_queued" in full.body["detail"]
        assert [r["status"] for r in full.body["runs"]] == ["running", "queued", "queued"]
    [running, *_] = await runs(http, server.url, sid)
    await cancel(http, server.url, sid, run_id=running["run_id"])
    for turn in [first, *waiting]:
        await turn.finished()
    assert [t.status for t in waiting] == [200, 200]
    await settle(http, server, sid)
    assert user_texts(await stored(server, sid, http)) == ["words 30", "quick", "quick"]


async def test_a_policy_that_does_not_exist_is_400(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, server.url)
    for route in ("run", "run_sse", "run_live"):
        turn = await (await start(http, server.url, route, sid, "quick", policy="later")).finished()
        assert turn.status == 400, turn.body
        assert "must be one of allow, reject, interrupt, rollback, enqueue" in turn.body["detail"]
    live = await (
        await start(http, server.url, "run_live", sid, "quick", policy="later", header=False)
    ).finished()
    assert live.status == 400 and "on_busy query parameter" in live.body["detail"]
    assert await runs(http, server.url, sid) == [] and not prompts(sid)


async def test_runs_started_under_allow_are_active_to_the_other_policies(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    """allow (the default) is ADK's behaviour: two runs at once. A later run under another
    policy still sees them: reject names them, interrupt stops them all."""
    sid = await new_session(http, server.url)
    a = await active(http, server, "run_sse", sid)
    b = await start(http, server.url, "run", sid, "tool 30")
    await until(lambda: _count(http, server, sid, 2), what="both running")

    refused = await (await start(http, server.url, "run", sid, "quick", policy="reject")).finished()
    assert refused.status == 409 and len(refused.body["runs"]) == 2

    c = await start(http, server.url, "run_sse", sid, "quick", policy="interrupt")
    await c.finished()
    await a.finished()
    await b.finished()
    assert len(c.replaced) == 2 and a.cancelled and b.cancelled
    assert "Here is a quick answer." in c.texts()
    await settle(http, server, sid)
    assert_well_formed_after_allow(await stored(server, sid, http))


def assert_well_formed_after_allow(events: list[Any]) -> None:
    # Two runs under allow interleave by design; the stored history still answers every call.
    from adk_cancel.testing import unanswered_calls

    assert unanswered_calls(events) == []
    assert user_texts(events)[-1] == "quick"


async def test_a_run_after_the_last_one_answered_finds_the_session_free(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    """The session is given back before the last byte of an answer: a client that sends its
    next message as soon as it has the answer is never refused."""
    sid = await new_session(http, server.url)
    for i in range(10):
        route = ("run", "run_sse")[i % 2]
        turn = await start(http, server.url, route, sid, "quick", policy="reject")
        assert (await turn.finished()).status == 200, (i, turn.body)
    await settle(http, server, sid)
    assert_well_formed(await stored(server, sid, http))


async def test_waiting_runs_are_listed_and_the_lease_is_given_back_on_every_path(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, server.url)
    first = await active(http, server, "run", sid, policy="enqueue")
    second = await start(http, server.url, "run_sse", sid, "quick", policy="enqueue")
    await until(lambda: _count(http, server, sid, 2))
    assert leases_left(server) == 2  # the first holds the session, the second is queued
    await cancel(http, server.url, sid)
    await asyncio.gather(first.finished(), second.finished())
    await settle(http, server, sid)
