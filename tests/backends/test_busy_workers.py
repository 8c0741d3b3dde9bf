"""The busy policies across workers: real ``adk-cancel api_server`` processes sharing one
Redis and one SQLite session file. A run on one worker is interrupted, rolled back or queued
behind by a message sent to another; and messages sent to both workers at once never run two
at a time (read back from the SQLite file: no two invocations overlap in time)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.adk.events.event import Event
from google.adk.sessions.sqlite_session_service import SqliteSessionService
from support import until
from turns import APP, assert_well_formed, cancel, kept, new_session, runs, start, user_texts

from adk_cancel.testing import RedisServer, free_port, unanswered_calls

from .backend_helpers import REDIS_SERVER
from .test_multiworker import Worker, start_workers

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not on PATH: CI installs it"),
]

TTL_S = 2.0
"""Short, so that a killed worker's lease lapses within the test."""

TRIALS = 50


class Pair:
    def __init__(self, redis: RedisServer, workers: list[Worker], db: Path) -> None:
        self.redis = redis
        self.a, self.b, self.c = workers
        self.workers = workers
        self.db = db

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.stop()

    async def events(self, sid: str) -> list[Event]:
        service = SqliteSessionService(str(self.db))
        stored = await service.get_session(app_name=APP, user_id="u", session_id=sid)
        assert stored is not None
        return list(stored.events)

    def prompts(self, sid: str) -> list[list[tuple[str, str]]]:
        """Every prompt the model got for the session, on any worker, in order."""
        records = sorted(
            (r for w in self.workers for r in w.observed(sid) if r["event"] == "model_request"),
            key=lambda r: float(r["t"]),
        )
        return [[(c["role"], c["text"]) for c in r["contents"] if c["text"]] for r in records]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("busy-workers")
    redis = RedisServer(free_port(), workdir)
    redis.start()
    try:
        workers = start_workers(["a", "b", "c"], f"{redis.url}?announce_ttl_s={TTL_S}", workdir)
    except BaseException:
        redis.stop()
        raise
    result = Pair(redis, workers, workdir / "sessions.db")
    yield result
    result.close()


def spans(events: list[Event]) -> list[tuple[float, float, str]]:
    """Each invocation's (first, last) event time: when it ran, as the store has it."""
    by_invocation: dict[str, list[float]] = {}
    for event in events:
        if event.actions.rewind_before_invocation_id or (event.custom_metadata or {}).get(
            "adk_cancel", {}
        ).get("restored_state"):
            continue
        by_invocation.setdefault(event.invocation_id, []).append(event.timestamp)
    return sorted((min(t), max(t), i) for i, t in by_invocation.items())


def assert_one_at_a_time(events: list[Event]) -> None:
    assert unanswered_calls(events) == []
    ordered = spans(events)
    for (_, end, first), (start_, _, second) in itertools.pairwise(ordered):
        assert end < start_, f"{first} and {second} ran at the same time: {ordered}"


async def streaming_on(http: httpx.AsyncClient, worker: Worker, sid: str, route: str) -> Any:
    turn = await start(http, worker.url, route, sid, "words 30")
    await until(lambda: turn.partials() >= 3 or turn.done, what="three words streamed")
    assert not turn.done
    return turn


@pytest.mark.parametrize("route", ["run", "run_sse", "run_live"])
async def test_a_message_to_one_worker_interrupts_a_run_on_the_other(
    pair: Pair, http: httpx.AsyncClient, route: str
) -> None:
    a, b = pair.a, pair.b
    sid = await new_session(http, a.url)
    first = await streaming_on(http, a, sid, "run_sse")
    [listed] = await runs(http, b.url, sid)

    second = await start(http, b.url, route, sid, "quick", policy="interrupt")
    await until(lambda: second.answered() or second.done, what="the new answer")
    if route == "run_live":
        await second.ws.close()
    await second.finished()
    await first.finished()

    [replaced] = second.replaced
    assert replaced["run_id"] == listed["run_id"] and a.holds(replaced)
    assert first.cancelled is not None and "replaced" in str(first.cancelled["reason"])
    await until(lambda: _empty(http, a, sid), what="no run left")
    events = await pair.events(sid)
    assert_one_at_a_time(events)
    [words] = kept(events)
    assert words.content is not None and words.content.parts[0].text == first.streamed_text()
    if route != "run_live":
        assert pair.prompts(sid)[-1] == [
            ("user", "words 30"),
            ("model", first.streamed_text()),
            ("user", "quick"),
        ]


async def _empty(http: httpx.AsyncClient, worker: Worker, sid: str) -> bool:
    return await runs(http, worker.url, sid) == []


async def test_rollback_across_workers(pair: Pair, http: httpx.AsyncClient) -> None:
    a, b = pair.a, pair.b
    sid = await new_session(http, a.url, state={"topic": "cats"})
    first = await start(http, a.url, "run", sid, "tool 30", state_delta={"mood": "curious"})
    await until(lambda: a.saw("tool_started", sid), what="in the tool")

    second = await (await start(http, b.url, "run_sse", sid, "quick", policy="rollback")).finished()
    await first.finished()
    [replaced] = second.replaced
    assert a.holds(replaced) and replaced["rolled_back"] is True
    assert pair.prompts(sid)[-1] == [("user", "quick")]
    session = await SqliteSessionService(str(pair.db)).get_session(
        app_name=APP, user_id="u", session_id=sid
    )
    assert session is not None
    assert session.state["topic"] == "cats" and session.state.get("mood") is None
    assert_well_formed(session.events)


async def test_a_cancel_with_rollback_through_the_other_worker(
    pair: Pair, http: httpx.AsyncClient
) -> None:
    a, b = pair.a, pair.b
    sid = await new_session(http, a.url)
    first = await streaming_on(http, a, sid, "run_live")
    answer = await cancel(http, b.url, sid, action="rollback")
    [run] = answer["runs"]
    assert a.holds(run) and run["rolled_back"] is True
    await first.finished()
    follow_up = await (await start(http, b.url, "run", sid, "quick")).finished()
    assert follow_up.status == 200
    assert pair.prompts(sid)[-1] == [("user", "quick")]


async def test_runs_queue_across_workers_in_arrival_order(
    pair: Pair, http: httpx.AsyncClient
) -> None:
    a, b = pair.a, pair.b
    sid = await new_session(http, a.url)
    first = await start(http, a.url, "run_sse", sid, "words 5", policy="enqueue")
    await until(lambda: first.partials() >= 1, what="first streaming")
    turns = [first]
    for worker, text in ((b, "words 1"), (a, "quick"), (b, "words 2")):
        turns.append(await start(http, worker.url, "run", sid, text, policy="enqueue"))
        listed = functools.partial(_listed, http, a, sid, len(turns))
        await until(listed, what=f"{text} queued")
    for worker in (a, b):
        now = await runs(http, worker.url, sid)
        assert sorted(r["status"] for r in now) == ["queued", "queued", "queued", "running"]
    # Withdraw the last one through the worker that does not hold it.
    on_b = [r for r in await runs(http, a.url, sid) if b.holds(r) and r["status"] == "queued"]
    last = max(on_b, key=lambda r: float(r["started_at"]))
    answer = await cancel(http, a.url, sid, run_id=last["run_id"])
    assert answer["runs"][0]["stopped_by"] == "queued"
    for turn in turns:
        await turn.finished()
    assert turns[-1].cancelled is not None
    events = await pair.events(sid)
    assert user_texts(events) == ["words 5", "words 1", "quick"]
    assert_one_at_a_time(events)


async def _listed(http: httpx.AsyncClient, worker: Worker, sid: str, n: int) -> bool:
    return len(await runs(http, worker.url, sid)) == n


@pytest.mark.parametrize("policy", ["reject", "interrupt", "rollback", "enqueue"])
async def test_messages_at_both_workers_at_once_never_run_two_at_a_time(
    pair: Pair, http: httpx.AsyncClient, policy: str
) -> None:
    a, b = pair.a, pair.b
    statuses: list[tuple[int, ...]] = []
    replacements = 0
    for trial in range(TRIALS):
        sid = await new_session(http, a.url)
        sent = [
            await start(http, worker.url, "run", sid, f"words 2 from {worker.name}", policy=policy)
            for worker in (a, b)
        ]
        for turn in sent:
            await turn.finished()
        codes = tuple(sorted(t.status or 0 for t in sent))
        statuses.append(codes)
        assert all(c < 500 for c in codes), (trial, [t.body for t in sent])
        events = await pair.events(sid)
        assert_one_at_a_time(events)
        stored = user_texts(events)
        if policy == "reject":
            assert codes in ((200, 409), (200, 200)), codes
            assert len(stored) == codes.count(200)
        else:
            assert codes == (200, 200)
            assert sorted(stored) == ["words 2 from a", "words 2 from b"]
        if policy == "enqueue":
            assert all(t.cancelled is None for t in sent)
        if policy in ("interrupt", "rollback"):
            # Either the later one replaced the earlier (which its client was told), or the
            # earlier had ended when the later one arrived.
            newer = [t for t in sent if t.replaced]
            older = [t for t in sent if t.cancelled]
            assert len(newer) == len(older) <= 1, [t.headers for t in sent]
            if newer:
                [run] = newer[0].replaced
                assert run["rolled_back"] is (True if policy == "rollback" else None)
            replacements += len(newer)
    # Sent at once, they overlapped: the policy decided, not the timing.
    if policy == "reject":
        assert statuses.count((200, 409)) > TRIALS * 0.8, statuses
    if policy in ("interrupt", "rollback"):
        assert replacements > TRIALS * 0.8


async def test_a_crashed_workers_lease_lapses(pair: Pair, http: httpx.AsyncClient) -> None:
    c, b = pair.c, pair.b
    sid = await new_session(http, c.url)
    held = await start(http, c.url, "run_sse", sid, "words 30", policy="reject")
    await until(lambda: held.partials() >= 1, what="streaming")
    refused = await (await start(http, b.url, "run", sid, "quick", policy="reject")).finished()
    assert refused.status == 409 and c.holds(refused.body["runs"][0])

    c.kill()  # SIGKILL: nothing released, nothing sealed
    killed_at = time.monotonic()
    with pytest.raises(httpx.HTTPError):
        await held.finished()
    while True:
        turn = await (await start(http, b.url, "run", sid, "quick", policy="reject")).finished()
        if turn.status == 200:
            break
        assert turn.status == 409
        assert time.monotonic() - killed_at < TTL_S + 1.5, (
            "the dead worker's lease outlived its TTL"
        )
        await asyncio.sleep(0.05)
    assert "Here is a quick answer." in turn.texts()
