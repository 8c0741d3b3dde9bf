"""Rejoining a run's stream through another worker: server processes sharing one Redis and one
SQLite session store. A run held by worker a is followed through worker b, whose followers
read a's log from Redis Streams; Redis restarts mid-run; a worker dies mid-run.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import run_body, session_path, until

from adk_cancel.testing import RedisServer, SseEvent, events_path, free_port, parse_sse

from .backend_helpers import REDIS_SERVER
from .test_multiworker import Worker, new_session

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not on PATH: CI installs it"),
]

MAX_EVENTS = 40
"""The workers' stream_max_events: a 46-event run outgrows it."""
CONTINUE = {"X-ADK-On-Disconnect": "continue"}


class Cluster:
    def __init__(self, redis: RedisServer, workers: list[Worker]) -> None:
        self.redis = redis
        self.a, self.b, self.c, self.d = workers
        self.workers = workers

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("rejoin")
    redis = RedisServer(free_port(), workdir).start()
    url = f"{redis.url}?announce_ttl_s=2"
    workers = [Worker(name, url, workdir / "sessions.db", workdir) for name in ("a", "b", "c", "d")]
    for worker in workers:
        worker.argv[-1:-1] = ["--stream_max_events", str(MAX_EVENTS)]
    try:
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        for worker in workers:
            worker.kill()
        redis.stop()
        raise
    result = Cluster(redis, workers)
    yield result
    result.close()


class Reader:
    """One SSE client and what it read."""

    def __init__(self) -> None:
        self.text = ""
        self.status = 0
        self.run_id = ""

    @property
    def events(self) -> list[SseEvent]:
        return parse_sse(self.text)

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events if e.id is not None]

    async def read(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        until_id: int | None = None,
        **kwargs: Any,
    ) -> Reader:
        async with http.stream(method, url, **kwargs) as response:
            self.status = response.status_code
            self.run_id = response.headers.get("x-adk-run-id", "")
            async for chunk in response.aiter_text():
                self.text += chunk
                if until_id is not None and until_id in self.ids:
                    break
        return self


def start(http: httpx.AsyncClient, worker: Worker, sid: str, text: str, **kw: Any) -> Reader:
    """A /run_sse client of ``worker`` under ``continue``, reading in a task of its own."""
    reader = Reader()
    body = run_body(sid, text, streaming=True)
    reader.task = asyncio.create_task(  # type: ignore[attr-defined]
        reader.read(http, "POST", worker.url + "/run_sse", json=body, headers=CONTINUE, **kw)
    )
    return reader


async def follow(
    http: httpx.AsyncClient, worker: Worker, sid: str, run_id: str, **kw: Any
) -> Reader:
    return await Reader().read(http, "GET", worker.url + events_path(sid, run_id), **kw)


async def test_a_run_is_followed_through_the_other_worker(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    a, b = cluster.a, cluster.b
    sid = await new_session(http, a)
    direct = start(http, a, sid, "words 20", until_id=4)
    await until(lambda: direct.run_id and 4 in direct.ids, what="4 events")
    run_id = direct.run_id
    await direct.task  # type: ignore[attr-defined]  # it left after event 4
    [listed] = await until(
        lambda: _detached(http, b, sid), what="the run listed as detached through b"
    )
    assert a.holds(listed)
    from_start, from_four = await asyncio.gather(
        follow(http, b, sid, run_id),
        follow(http, b, sid, run_id, headers={"Last-Event-ID": "4"}),
    )
    assert from_start.status == from_four.status == 200
    assert from_start.ids == list(range(1, 22))
    assert from_four.ids == list(range(5, 22))
    assert from_start.text.endswith(from_four.text)
    # The same bytes as the holder serves.
    through_a = await follow(http, a, sid, run_id)
    assert through_a.text == from_start.text
    assert from_start.events[-1].json()["finishReason"] == "STOP"
    # After the end, through b: caught up is 204, past the end 422.
    url = b.url + events_path(sid, run_id)
    assert (await http.get(url, headers={"Last-Event-ID": "21"})).status_code == 204
    assert (await http.get(url, headers={"Last-Event-ID": "22"})).status_code == 422
    assert (await http.get(b.url + events_path(sid, "nope"))).status_code == 404


async def test_a_fast_run_reaches_redis_in_a_few_commands_and_in_order(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    # A run that streams 30 events with no pause: its events are written a batch per round
    # trip, one command per batch (not one per event), and a follower through b reads
    # every one, in order, once.
    from redis.asyncio import Redis

    a, b = cluster.a, cluster.b
    raw = Redis.from_url(cluster.redis.url, decode_responses=True)
    try:
        before = await raw.info("commandstats")
        sid = await new_session(http, a)
        direct = await start(http, a, sid, "fast 30").task  # type: ignore[attr-defined]
        assert direct.ids == list(range(1, 32))
        through_b = await follow(http, b, sid, direct.run_id)
        assert through_b.text == direct.text
        after = await raw.info("commandstats")
    finally:
        await raw.aclose()

    def calls(stats: dict[str, Any], command: str) -> int:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    # Redis counts the script's own XADDs: each of the 31 events and the end, once.
    assert calls(after, "xadd") - calls(before, "xadd") == 32
    assert 1 <= calls(after, "eval") - calls(before, "eval") <= 16


async def _detached(http: httpx.AsyncClient, worker: Worker, sid: str) -> list[dict[str, Any]]:
    answer = await http.get(worker.url + session_path(sid) + "/runs")
    return [r for r in answer.json()["runs"] if r["detached"]]


async def test_a_run_past_its_bound_answers_410_through_the_other_worker(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    a, b = cluster.a, cluster.b
    sid = await new_session(http, a)
    body = run_body(sid, "fast 45", streaming=True)
    direct = await Reader().read(http, "POST", a.url + "/run_sse", json=body, headers=CONTINUE)
    assert direct.ids == list(range(1, 47))
    url = b.url + events_path(sid, direct.run_id)
    first_kept = 47 - MAX_EVENTS
    # Redis gets the log's writes a batch at a time: wait for the last one (the bound moved).
    gone = await until(lambda: _gone(http, url, first_kept), what="410 through b")
    assert gone.json()["first_kept_id"] == first_kept
    kept = await Reader().read(http, "GET", url, headers={"Last-Event-ID": str(first_kept - 1)})
    assert kept.ids == list(range(first_kept, 47))
    assert direct.text.endswith(kept.text)


async def _gone(http: httpx.AsyncClient, url: str, first_kept: int) -> httpx.Response | None:
    answer = await http.get(url)
    if answer.status_code == 410 and answer.json()["first_kept_id"] == first_kept:
        return answer
    return None


async def test_a_cancel_policy_run_is_409_through_the_other_worker(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    a, b = cluster.a, cluster.b
    sid = await new_session(http, a)
    body = run_body(sid, "tool 30", streaming=True)
    request = asyncio.create_task(http.post(a.url + "/run_sse", json=body))
    await until(lambda: a.saw("tool_started", sid), what="tool started")
    [run] = (await http.get(b.url + session_path(sid) + "/runs")).json()["runs"]
    answer = await http.get(b.url + events_path(sid, run["run_id"]))
    assert answer.status_code == 409
    assert "'cancel'" in answer.json()["detail"]
    await http.post(b.url + session_path(sid) + ":cancel")
    await request


async def test_cancel_through_b_of_a_detached_run_on_a_reaches_its_followers(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    a, b = cluster.a, cluster.b
    sid = await new_session(http, a)
    direct = start(http, a, sid, "tool 30", until_id=1)
    await direct.task  # type: ignore[attr-defined]
    await until(lambda: a.saw("tool_started", sid), what="tool started")
    await until(lambda: _detached(http, b, sid), what="detached")
    follower = asyncio.create_task(follow(http, b, sid, direct.run_id))
    answer = await http.post(
        b.url + session_path(sid) + ":cancel", json={"reason": "stopped from b"}
    )
    assert answer.status_code == 200, answer.text
    assert [r["stopped_by"] for r in answer.json()["runs"]] == ["abort"]
    followed = await asyncio.wait_for(follower, 10)
    last = followed.events[-1]
    assert last.event == "cancelled" and last.id == followed.ids[-1]
    assert last.json()["cancelled"]["reason"] == "stopped from b"
    assert followed.ids == list(range(1, len(followed.ids) + 1))


async def test_redis_restarting_mid_run_costs_a_follower_nothing(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    """What a follower through another worker sees while Redis restarts (empty): its stream
    pauses, then goes on where it was once Redis is back and the holder has written its log
    again; no event missed, none twice. New rejoins through b meanwhile get 503; a follower
    through the holder notices nothing."""
    a, b, redis = cluster.a, cluster.b, cluster.redis
    sid = await new_session(http, a)
    direct = start(http, a, sid, "words 40")
    await until(lambda: direct.run_id and direct.ids, what="first event")
    run_id = direct.run_id
    through_b = Reader()
    b_task = asyncio.create_task(through_b.read(http, "GET", b.url + events_path(sid, run_id)))
    through_a = asyncio.create_task(follow(http, a, sid, run_id))
    await until(lambda: 5 in through_b.ids, what="b's follower at event 5")
    redis.stop()
    try:
        # Events go on while Redis is down, and only the holder has them.
        seen = max(direct.ids)
        await until(lambda: max(direct.ids) >= seen + 5, what="5 more events while down")
        during = await http.get(b.url + events_path(sid, run_id))
        assert during.status_code == 503, during.text
        assert max(through_b.ids) < max(direct.ids)
    finally:
        redis.start()
    await asyncio.wait_for(direct.task, 30)  # type: ignore[attr-defined]
    await asyncio.wait_for(b_task, 30)
    followed_a = await asyncio.wait_for(through_a, 30)
    assert direct.ids == list(range(1, 42))
    assert through_b.ids == direct.ids
    assert through_b.text.replace(": ping\n\n", "") == direct.text
    assert followed_a.text == direct.text


async def test_a_worker_dying_mid_run_ends_its_followers_with_an_error(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    b, c = cluster.b, cluster.c
    sid = await new_session(http, c)
    direct = start(http, c, sid, "tool 60", until_id=1)
    await direct.task  # type: ignore[attr-defined]
    await until(lambda: c.saw("tool_started", sid), what="tool started")
    follower = asyncio.create_task(follow(http, b, sid, direct.run_id))
    await until(lambda: _detached(http, b, sid), what="detached")
    c.kill()
    followed = await asyncio.wait_for(follower, 60)
    last = followed.events[-1]
    assert last.event == "error" and last.id is None
    assert "stopped without ending its stream" in last.json()["error"]
    assert last.json()["lastEventId"] == followed.ids[-1]


async def test_a_follower_of_a_worker_shutting_down_rejoins_through_another(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    a, b, d = cluster.a, cluster.b, cluster.d
    sid = await new_session(http, a)
    direct = start(http, a, sid, "words 40")
    await until(lambda: direct.run_id and direct.ids, what="first event")
    through_d = Reader()
    following = asyncio.create_task(
        through_d.read(http, "GET", d.url + events_path(sid, direct.run_id))
    )
    await until(lambda: 3 in through_d.ids, what="d's follower at event 3")
    d.send_signal(signal.SIGTERM)
    await asyncio.wait_for(following, 10)
    # It lets go at once (the run is another worker's to finish), saying where it was.
    last = through_d.events[-1]
    assert last.event == "reconnect" and last.id is None
    assert last.json()["lastEventId"] == through_d.ids[-1]
    assert await asyncio.to_thread(d.wait, 20) == 0
    rest = await follow(
        http, b, sid, direct.run_id, headers={"Last-Event-ID": str(through_d.ids[-1])}
    )
    await direct.task  # type: ignore[attr-defined]
    assert through_d.ids + rest.ids == direct.ids == list(range(1, 42))


def test_the_cluster_logged_no_error(cluster: Cluster, tmp_path: Path) -> None:
    for worker in (cluster.a, cluster.b):
        log = worker.log()
        assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
