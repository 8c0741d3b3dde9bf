"""Cancel latency across workers through Redis, next to the same-worker cancel.

Run: .venv/bin/python bench/_redis_bench.py [--trials 100]
(``bench/cancel_latency.py`` calls ``main()`` at its end.)

Starts a throwaway ``redis-server`` and two ``adk-cancel api_server`` processes serving
``samples/`` and sharing a SQLite session store. Each trial starts a /run of the slow sample
agent on worker A,
waits until its async tool is running, then sends ``:cancel`` (wait=true) either to A itself
(same-worker) or to B (cross-worker: B asks A through Redis). The two kinds alternate, so both
see the same conditions. Recorded per trial:
  - rtt: the client's time for the whole ``:cancel`` request (what the Redis hop adds to), and
  - stop: the holder's stop_ms, from the cancel reaching the run to its task having ended.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _measure import pct

from adk_cancel.testing import (
    RedisServer,
    ServerProcess,
    SimpleNode,
    free_port,
    run_body,
    session_path,
    wait_for_call,
)

ROOT = Path(__file__).resolve().parent.parent

TARGET_P99_MS = 30.0


def _holds(worker: ServerProcess, run: dict[str, Any]) -> bool:
    """Whether a cancelled run belongs to ``worker`` (node ids hold the pid)."""
    return f":{worker.pid}:" in str(run["worker"])


async def _trial(
    client: httpx.AsyncClient, holder: ServerProcess, canceller: ServerProcess
) -> tuple[float, float]:
    sid = (await client.post(f"{holder.url}/apps/slow_agent/users/u/sessions", json={})).json()[
        "id"
    ]
    run = asyncio.create_task(client.post(f"{holder.url}/run", json=run_body(sid, "tool 30")))
    await wait_for_call(client, holder.url, sid)
    started = time.perf_counter()
    answer = await client.post(canceller.url + session_path(sid) + ":cancel")
    rtt = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise RuntimeError(f"cancel answered {answer.status_code}: {answer.text}")
    [outcome] = answer.json()["runs"]
    if outcome["stopped_by"] != "abort" or not _holds(holder, outcome):
        raise RuntimeError(f"unexpected outcome: {outcome}")
    await run
    return rtt, float(outcome["stop_ms"])


async def measure(
    a: ServerProcess, b: ServerProcess, trials: int
) -> dict[str, dict[str, list[float]]]:
    """Alternate same-worker (A -> A) and cross-worker (B -> A via Redis) cancels."""
    results: dict[str, dict[str, list[float]]] = {
        "same-worker": {"rtt": [], "stop": []},
        "cross-worker": {"rtt": [], "stop": []},
    }
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(trials * 2 + 6):
            mode, canceller = ("same-worker", a) if i % 2 == 0 else ("cross-worker", b)
            rtt, stop = await _trial(client, a, canceller)
            if i >= 6:  # warm-up: first imports, connections, SQLite pages
                results[mode]["rtt"].append(rtt)
                results[mode]["stop"].append(stop)
    return results


async def backend_hop(url: str, trials: int) -> list[float]:
    """The backend alone: two RedisBackends and real SimpleNodes in this process, timing
    ``cancel_remote`` (wait=true) of a run that stops as soon as it is aborted."""
    from adk_cancel import CancelOrder, SessionKey
    from adk_cancel.backends import RedisBackend

    holder = SimpleNode(RedisBackend(url, key_prefix="bench"))
    requester = SimpleNode(RedisBackend(url, key_prefix="bench"))
    for node in (holder, requester):
        await node.backend.connect(node)
    times: list[float] = []
    try:
        for i in range(trials + 10):
            key = SessionKey("bench", "u", f"s{i}")
            holder.start_run(key)
            while not await requester.backend.list_remote(key):
                await asyncio.sleep(0.001)
            started = time.perf_counter()
            [outcome] = await requester.backend.cancel_remote(
                CancelOrder(key, "bench", wait=True, timeout_s=5)
            )
            elapsed = (time.perf_counter() - started) * 1000
            if outcome.stopped_by != "abort":
                raise RuntimeError(f"unexpected outcome: {outcome}")
            if i >= 10:
                times.append(elapsed)
    finally:
        for node in (holder, requester):
            await node.close()
            await node.backend.disconnect()
    return times


def run_bench(trials: int = 100) -> dict[str, dict[str, list[float]]] | None:
    """Measure with a throwaway Redis and two workers; None when redis-server is missing."""
    if shutil.which("redis-server") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="adk-cancel-redis-bench-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(free_port(), workdir)
        redis.start()
        flags = (
            f"--session_service_uri=sqlite:///{workdir / 'sessions.db'}",
            f"--cancel_backend={redis.url}",
            "--log_level=warning",
            "--no_chat",
        )
        workers = [
            ServerProcess(ROOT / "samples", *flags, log_path=workdir / f"{name}.log")
            for name in "ab"
        ]
        try:
            for worker in workers:
                worker.start(wait=False)
            for worker in workers:
                worker.wait_ready()
            results = asyncio.run(measure(workers[0], workers[1], trials))
            results["backend hop"] = {"rtt": asyncio.run(backend_hop(redis.url, trials))}
            return results
        finally:
            for worker in workers:
                worker.stop()
            redis.stop()


def print_table(results: dict[str, dict[str, list[float]]]) -> None:
    trials = len(results["same-worker"]["rtt"])
    print(f"cancel across workers through Redis, {trials} trials each (two uvicorn processes)")
    print(f"{'mode':<13} {'rtt p50':>9} {'rtt p99':>9} {'stop p50':>9} {'stop p99':>9}  ms")
    for mode, values in results.items():
        rtt, stop = values["rtt"], values.get("stop")
        line = f"{mode:<13} {statistics.median(rtt):9.2f} {pct(rtt, 0.99):9.2f} "
        if stop:
            line += f"{statistics.median(stop):9.2f} {pct(stop, 0.99):9.2f}"
        else:
            line += f"{'-':>9} {'-':>9}"
        if mode == "cross-worker":
            ok = pct(rtt, 0.99) < TARGET_P99_MS
            line += f"   target rtt p99 < {TARGET_P99_MS:g} ms: {'ok' if ok else 'MISSED'}"
        print(line)
    same, cross = results["same-worker"]["rtt"], results["cross-worker"]["rtt"]
    print(f"Redis hop: +{statistics.median(cross) - statistics.median(same):.2f} ms at p50")
    print("backend hop: RedisBackend.cancel_remote alone, two backends in one process")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    # Called from cancel_latency.py with its own flags in sys.argv: ignore those.
    args, _ = parser.parse_known_args(argv)
    results = run_bench(args.trials)
    if results is None:
        print("cross-worker cancel: skipped (redis-server is not on PATH)")
        return
    print_table(results)


if __name__ == "__main__":
    main()
