"""Keep what the user saw: after an interrupt, the words a run had streamed are stored as one
interrupted model event just before ADK's seal, so a reload shows them and the model's next
turn knows what it said. On each route, on a memory and a SQLite store."""

from __future__ import annotations

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
    kept,
    new_session,
    noted,
    prompts,
    said,
    serve_app,
    start,
    stored,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from serve_app(tmp_path_factory.mktemp(request.param), request.param)


# /run's client sees nothing until the end: its words are streamed inside the run, by a
# model that streams whatever the route asks.
APPS = {"run": "streaming_agent", "run_sse": "recording_agent", "run_live": "recording_agent"}


async def streaming(http: httpx.AsyncClient, server: Server, route: str, sid: str) -> Any:
    """A run four words into a thirty-word answer."""
    turn = await start(http, server.url, route, sid, "words 30", app=APPS[route])
    if route == "run":
        await until(lambda: len(observed_chunks()) >= 4, what="four words streamed")
    else:
        await until(lambda: turn.partials() >= 4, what="four words streamed")
    return turn


def observed_chunks() -> list[str]:
    from observations import OBSERVED

    return [o["text"] for o in OBSERVED if o["event"] == "model_chunk"]


@pytest.mark.parametrize("route", ["run", "run_sse", "run_live"])
async def test_an_interrupt_keeps_the_streamed_words_before_the_seal(
    server: Server, http: httpx.AsyncClient, observed: Any, route: str
) -> None:
    app = APPS[route]
    sid = await new_session(http, server.url, app=app)
    turn = await streaming(http, server, route, sid)
    answer = await cancel(http, server.url, sid, app=app, reason="enough")
    [run] = answer["runs"]
    assert run["rolled_back"] is None  # no rollback was asked
    await turn.finished()

    streamed = turn.streamed_text()
    assert streamed.startswith("word0 word1 word2 word3 "), streamed
    events = await stored(server, sid, http, app)
    assert_well_formed(events)
    [words] = kept(events)
    assert words.content is not None and words.content.parts[0].text == streamed
    assert words.content.role == "model" and words.author == app
    assert words.invocation_id == run["invocation_id"] and words.interrupted is True
    assert words.custom_metadata == {
        "adk_cancel": {
            "interrupted": True,
            "reason": "enough",
            "cause": "request",
            "run_id": run["run_id"],
        }
    }
    after = events[events.index(words) + 1 :]
    if route == "run_live":
        assert after == []  # ADK does not seal live runs; nothing was left to answer
    else:
        assert [e.error_code for e in after] == ["INVOCATION_ABORTED"], [
            (e.author, e.error_code, e.interrupted) for e in events
        ]

    # The model's next turn knows what it said.
    follow_up = await (await start(http, server.url, "run", sid, "quick", app=app)).finished()
    assert follow_up.status == 200
    assert said(prompts(sid)[-1]) == [("user", "words 30"), ("model", streamed), ("user", "quick")]


async def test_a_client_that_leaves_mid_answer_has_its_words_kept(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, server.url)
    turn = await streaming(http, server, "run_sse", sid)
    assert turn.task is not None
    turn.task.cancel()  # the page is closed mid-answer
    streamed = turn.streamed_text()
    await until(lambda: _kept(server, sid, http), what="words kept")
    [words] = kept(await stored(server, sid, http))
    # What the client had read when it left; the server may have sent a word more.
    assert words.content is not None and words.content.parts[0].text.startswith(streamed)
    assert words.custom_metadata["adk_cancel"]["cause"] == "disconnect"  # type: ignore[index]


async def _kept(server: Server, sid: str, http: httpx.AsyncClient) -> bool:
    return bool(kept(await stored(server, sid, http)))


async def test_nothing_is_kept_when_the_answer_was_complete_or_the_turn_waits_in_a_tool(
    server: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, server.url)
    turn = await start(http, server.url, "run_sse", sid, "tool 30")
    await until(lambda: noted("tool_started", sid), what="in the tool")
    await cancel(http, server.url, sid)
    await turn.finished()
    events = await stored(server, sid, http)
    assert not kept(events), "the words before the tool call are stored by ADK already"
    assert_well_formed(events)


@pytest.fixture
def forgetful(tmp_path: Path) -> Iterator[Server]:
    yield from serve_app(tmp_path, "sqlite", keep_partial=False)


async def test_keep_partial_off_stores_only_the_seal(
    forgetful: Server, http: httpx.AsyncClient, observed: Any
) -> None:
    sid = await new_session(http, forgetful.url)
    turn = await streaming(http, forgetful, "run_sse", sid)
    await cancel(http, forgetful.url, sid)
    await turn.finished()
    events = await stored(forgetful, sid, http)
    assert not kept(events)
    assert [e.error_code for e in events] == [None, "INVOCATION_ABORTED"]
