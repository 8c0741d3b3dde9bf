"""Conversation control: how long a new message waits when it interrupts a running answer,
and what rolling the interrupted turn back adds.

Run: .venv/bin/python bench/conversation.py [--trials 60] [--history 200] [--parts 1,2,3]

1. One worker (this process, real uvicorn, memory sessions). Each trial starts an answer of
   the slow sample agent on /run_sse, waits until three of its words have streamed, then
   sends a new message ("quick") on /run_sse with ``X-ADK-On-Busy: interrupt`` and times
   the new run's first event. Alternating with it, the same message on an idle session: the
   model's own first-event time. The figure is interrupt minus idle (p50, p99); target: p99
   of the interrupted one under 30 ms plus the idle one's p99.
2. Across workers: two ``adk-cancel api_server`` processes sharing Redis and a SQLite file;
   the answer runs on A, the new message goes to B (which holds the session lease only
   once A's run has stopped and been sealed). Target: under 50 ms plus the idle time on B.
3. Rollback vs interrupt on SQLite, one worker, sessions of ``--history`` events (cloned
   from one built through the API): the same interrupting message under ``interrupt`` and
   under ``rollback`` (ADK's rewind reads and replays the whole session), alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from _measure import pct

from adk_cancel.testing import RedisServer, ServerProcess, free_port, run_body, serve

ROOT = Path(__file__).resolve().parent.parent
APP = "slow_agent"
SERVICES = {"web": False, "artifact_service_uri": "memory://", "memory_service_uri": "memory://"}


async def new_session(client: httpx.AsyncClient, url: str) -> str:
    answer = await client.post(f"{url}/apps/{APP}/users/u/sessions", json={})
    answer.raise_for_status()
    return str(answer.json()["id"])


async def first_event_ms(
    client: httpx.AsyncClient, url: str, sid: str, policy: str | None = None
) -> tuple[float, dict[str, str]]:
    """Send "quick" on /run_sse: ms to its first event (and the response headers)."""
    headers = {"X-ADK-On-Busy": policy} if policy else {}
    body = run_body(sid, "quick", streaming=True)
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", f"{url}/run_sse", json=body, headers=headers) as answer:
        if answer.status_code != 200:
            raise RuntimeError(f"/run_sse answered {answer.status_code}: {await answer.aread()!r}")
        async for line in answer.aiter_lines():
            if first is None and line.startswith("data: "):
                first = (time.perf_counter() - started) * 1000
    if first is None:
        raise RuntimeError("the new run streamed nothing")
    return first, dict(answer.headers)


async def answering(client: httpx.AsyncClient, url: str, sid: str) -> asyncio.Task[None]:
    """An answer streaming on /run_sse, three words in; runs until it is interrupted. Sent
    as the chat page sends every message, under ``interrupt``."""
    seen = asyncio.Event()

    async def read() -> None:
        words = 0
        body = run_body(sid, "words 80", streaming=True)
        headers = {"X-ADK-On-Busy": "interrupt"}
        async with client.stream("POST", f"{url}/run_sse", json=body, headers=headers) as answer:
            async for line in answer.aiter_lines():
                words += line.startswith("data: ")
                if words >= 3:
                    seen.set()

    task = asyncio.create_task(read())
    waiting = asyncio.create_task(seen.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        await task
        raise RuntimeError("the answer ended before it could be interrupted")
    return task


async def interrupt_trials(url_a: str, url_b: str, trials: int) -> dict[str, list[float]]:
    """Alternating: an answer on A interrupted by a message to B, and the same message on
    an idle session of B. Three of each first, to warm up."""
    out: dict[str, list[float]] = {"idle": [], "interrupt": []}
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(2 * (trials + 3)):
            if i % 2 == 0:
                sid = await new_session(client, url_a)
                running = await answering(client, url_a, sid)
                ms, headers = await first_event_ms(client, url_b, sid, "interrupt")
                await running
                if "x-adk-replaced" not in headers:
                    raise RuntimeError(f"nothing was replaced: {headers}")
                kind = "interrupt"
            else:
                ms, _ = await first_event_ms(client, url_b, await new_session(client, url_b))
                kind = "idle"
            if i >= 6:
                out[kind].append(ms)
    return out


def report(title: str, figures: dict[str, list[float]], budget_ms: float) -> None:
    idle, hit = figures["idle"], figures["interrupt"]
    print(f"\n{title}: time from the new message to its first event, {len(hit)} trials, ms")
    print(f"{'':<24}{'p50':>8}{'p99':>8}")
    print(f"{'idle session (model)':<24}{statistics.median(idle):8.2f}{pct(idle, 0.99):8.2f}")
    print(f"{'interrupting a run':<24}{statistics.median(hit):8.2f}{pct(hit, 0.99):8.2f}")
    added = (statistics.median(hit) - statistics.median(idle), pct(hit, 0.99) - pct(idle, 0.99))
    print(f"{'added by the interrupt':<24}{added[0]:8.2f}{added[1]:8.2f}")
    ok = pct(hit, 0.99) < pct(idle, 0.99) + budget_ms
    print(f"target: p99 < idle p99 + {budget_ms:g} ms: {'ok' if ok else 'MISSED'}")


async def clone_sessions(db: Path, source: str, count: int) -> list[str]:
    """``count`` copies of the session ``source`` (same events, new ids), straight into the
    SQLite file through ADK's own session service."""
    from google.adk.sessions.sqlite_session_service import SqliteSessionService

    service = SqliteSessionService(str(db))
    original = await service.get_session(app_name=APP, user_id="u", session_id=source)
    assert original is not None
    made = []
    for _ in range(count):
        copy = await service.create_session(app_name=APP, user_id="u")
        for event in original.events:
            await service.append_event(copy, event.model_copy(update={"id": uuid.uuid4().hex}))
        made.append(copy.id)
    return made


async def rollback_cost(url: str, db: Path, trials: int, history: int) -> dict[str, list[float]]:
    async with httpx.AsyncClient(timeout=60) as client:
        source = await new_session(client, url)
        for _ in range(history // 2):  # each quick turn stores two events
            (await client.post(f"{url}/run", json=run_body(source, "quick"))).raise_for_status()
    sessions = await clone_sessions(db, source, 2 * (trials + 3))
    out: dict[str, list[float]] = {"interrupt": [], "rollback": []}
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(2 * (trials + 3)):
            policy = ("interrupt", "rollback")[i % 2]
            sid = sessions.pop()
            running = await answering(client, url, sid)
            ms, headers = await first_event_ms(client, url, sid, policy)
            await running
            if policy == "rollback" and '"rolled_back":true' not in headers["x-adk-replaced"]:
                raise RuntimeError(f"not rolled back: {headers['x-adk-replaced']}")
            if i >= 6:
                out[policy].append(ms)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--parts", default="1,2,3", help="which of the three to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    logging.getLogger("google_adk").setLevel(logging.ERROR)

    samples = str(ROOT / "samples")
    if "1" in parts:
        one_worker(samples, args.trials)
    if "2" in parts:
        across_workers(samples, args.trials)
    if "3" in parts:
        rollback_over_interrupt(samples, args.trials, args.history)


def one_worker(samples: str, trials: int) -> None:
    import adk_cancel

    app = adk_cancel.get_fast_api_app(
        agents_dir=samples, session_service_uri="memory://", **SERVICES
    )
    with serve(app) as url:
        one = asyncio.run(interrupt_trials(url, url, trials))
    report("One worker (memory sessions)", one, 30.0)


def across_workers(samples: str, trials: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis = RedisServer(free_port(), work).start()
        flags = (
            "--session_service_uri", f"sqlite:///{work / 'sessions.db'}",
            "--artifact_service_uri", "memory://", "--memory_service_uri", "memory://",
            "--cancel_backend", redis.url, "--no_chat", "--log_level", "error",
        )  # fmt: skip
        workers = [ServerProcess(samples, *flags, log_path=work / f"{n}.log") for n in "ab"]
        try:
            for worker in workers:
                worker.start(wait=False)
            for worker in workers:
                worker.wait_ready()
            a, b = workers
            across = asyncio.run(interrupt_trials(a.url, b.url, trials))
        finally:
            for worker in workers:
                worker.stop()
            redis.stop()
    report("Across workers (Redis, SQLite sessions): answer on A, new message to B", across, 50.0)


def rollback_over_interrupt(samples: str, trials: int, history: int) -> None:
    import adk_cancel

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "sessions.db"
        app = adk_cancel.get_fast_api_app(
            agents_dir=samples, session_service_uri=f"sqlite:///{db}", **SERVICES
        )
        with serve(app) as url:
            cost = asyncio.run(rollback_cost(url, db, trials, history))
    print(
        f"\nRollback vs interrupt, SQLite sessions of {history} events, one worker: time "
        f"from the new message to its first event, {trials} trials each, ms"
    )
    print(f"{'':<12}{'p50':>8}{'p99':>8}")
    for policy in ("interrupt", "rollback"):
        values = cost[policy]
        print(f"{policy:<12}{statistics.median(values):8.2f}{pct(values, 0.99):8.2f}")
    back, plain = cost["rollback"], cost["interrupt"]
    print(
        f"{'added':<12}{statistics.median(back) - statistics.median(plain):8.2f}"
        f"{pct(back, 0.99) - pct(plain, 0.99):8.2f}"
        "   (rollback's rewind of the whole session, over interrupt)"
    )


if __name__ == "__main__":
    main()
