"""Cancel latency per route, and the middleware's cost on /run_sse throughput.

Run: .venv/bin/python bench/cancel_latency.py [--trials 100] [--events 1000] [--rounds 12]

Everything runs in this process against real uvicorn servers on loopback. For each route a
run of the slow sample agent is started, the bench waits until its async tool is running,
then sends ``:cancel`` (wait=true) and records
  - stop_ms: the server's figure, from the cancel request reaching the run to the run's task
    having ended (what the target is about), and
  - round trip: the client's time for the whole ``:cancel`` request.
Throughput: /run_sse events/s of a fast scripted agent, with adk-cancel vs plain ADK, in
alternating rounds in the same process (each round's order flipped); the ratio is the median
of the per-round with / without ratios. Wall-clock rates on a shared 2-core machine swing
+-20% between rounds, so each round also reads the serving thread's CPU time: the server's
CPU microseconds per event, with and without, is the steadier figure of the middleware's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import websockets
from _measure import pct

from adk_cancel.testing import run_body, serve, session_path, wait_for_call

ROOT = Path(__file__).resolve().parent.parent
MEMORY_SERVICES = {
    "web": False,
    "session_service_uri": "memory://",
    "artifact_service_uri": "memory://",
    "memory_service_uri": "memory://",
}


async def one_trial(client: httpx.AsyncClient, url: str, route: str) -> tuple[float, float]:
    sid = (await client.post("/apps/slow_agent/users/u/sessions", json={})).json()["id"]
    if route == "run_live":
        ws_url = url.replace("http", "ws", 1)
        ws = await websockets.connect(
            f"{ws_url}/run_live?app_name=slow_agent&user_id=u&session_id={sid}&modalities=TEXT"
        )
        await ws.send(json.dumps({"content": {"role": "user", "parts": [{"text": "tool 30"}]}}))
        request: asyncio.Task[Any] | None = None
    else:
        body = run_body(sid, "tool 30", streaming=route == "run_sse")
        request = asyncio.create_task(client.post(f"/{route}", json=body))
    await wait_for_call(client, url, sid)
    started = time.perf_counter()
    answer = await client.post(session_path(sid) + ":cancel")
    round_trip = (time.perf_counter() - started) * 1000
    run = answer.json()["runs"][0]
    if request is not None:
        await request
    else:
        await ws.close()
    return float(run["stop_ms"]), round_trip


async def latency(url: str, trials: int) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for route in ("run", "run_sse", "run_live"):
            stops, trips = [], []
            for _ in range(3):  # warm-up
                await one_trial(client, url, route)
            for _ in range(trials):
                stop_ms, trip = await one_trial(client, url, route)
                stops.append(stop_ms)
                trips.append(trip)
            out[route] = (stops, trips)
    return out


def server_cpu_s(url: str) -> float:
    """CPU seconds the uvicorn thread serving ``url`` has used (``testing.serve`` names it)."""
    name = "uvicorn:" + url.rsplit(":", 1)[1]
    [thread] = [t for t in threading.enumerate() if t.name == name]
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def sse_round(url: str, events: int) -> tuple[float, float]:
    """One /run_sse of ``events`` events: (events/s seen by the client, server CPU us/event)."""
    cpu = server_cpu_s(url)
    rate = asyncio.run(sse_events_per_s(url, events))
    return rate, (server_cpu_s(url) - cpu) / events * 1e6


async def sse_events_per_s(url: str, events: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        sid = (await client.post("/apps/slow_agent/users/u/sessions", json={})).json()["id"]
        count = 0
        started = time.perf_counter()
        body = run_body(sid, f"fast {events}", streaming=True)
        async with client.stream("POST", "/run_sse", json=body) as response:
            async for line in response.aiter_lines():
                count += line.startswith("data: ")
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()

    import logging

    logging.getLogger("google_adk").setLevel(logging.ERROR)
    from google.adk.cli.fast_api import get_fast_api_app

    import adk_cancel

    samples = str(ROOT / "samples")
    with serve(adk_cancel.get_fast_api_app(agents_dir=samples, **MEMORY_SERVICES)) as url:
        # Throughput first, on two fresh servers: after the latency trials the adk-cancel
        # server would hold hundreds of sessions more than the plain one.
        with serve(get_fast_api_app(agents_dir=samples, **MEMORY_SERVICES)) as plain_url:
            asyncio.run(sse_events_per_s(url, 200))
            asyncio.run(sse_events_per_s(plain_url, 200))
            with_cancel, plain, ratios, cpu_ratios = [], [], [], []
            for i in range(args.rounds):
                # Alternate who goes first: the machine drifts over a run (frequency, GC).
                pair = [(url, with_cancel), (plain_url, plain)]
                for target, into in pair if i % 2 == 0 else pair[::-1]:
                    into.append(sse_round(target, args.events))
                ratios.append(with_cancel[-1][0] / plain[-1][0])
                cpu_ratios.append(with_cancel[-1][1] / plain[-1][1])
        results = asyncio.run(latency(url, args.trials))
    print(f"cancel latency, {args.trials} trials per route (agent awaiting an async tool)")
    print(f"{'route':<10} {'stop p50':>9} {'stop p99':>9} {'rtt p50':>9} {'rtt p99':>9}  ms")
    for route, (stops, trips) in results.items():
        print(
            f"{route:<10} {statistics.median(stops):9.2f} {pct(stops, 0.99):9.2f} "
            f"{statistics.median(trips):9.2f} {pct(trips, 0.99):9.2f}"
            f"   target stop p99 < 20 ms: {'ok' if pct(stops, 0.99) < 20 else 'MISSED'}"
        )
    ratio = statistics.median(ratios)
    print(f"\n/run_sse throughput, {args.events} events x {args.rounds} rounds, ABBA order")
    print(f"{'':<12}{'events/s':>10}{'server CPU us/event':>22}   (medians)")
    for label, rows in (("plain ADK", plain), ("adk-cancel", with_cancel)):
        rate, cpu = (statistics.median(r[i] for r in rows) for i in (0, 1))
        print(f"{label:<12}{rate:10.0f}{cpu:22.1f}")
    print(
        f"ratio       {ratio:10.3f}{statistics.median(cpu_ratios):22.3f}   "
        f"events/s: median of per-round ratios (spread {min(ratios):.3f}-{max(ratios):.3f}), "
        f"target >= 0.97: {'ok' if ratio >= 0.97 else 'MISSED'}; CPU: adk-cancel / plain"
    )

    try:
        from _redis_bench import main as redis_main
    except ImportError:
        return
    print()
    redis_main()


if __name__ == "__main__":
    main()
