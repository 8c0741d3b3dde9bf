"""What operations cost: server CPU per /run_sse event with run records, metrics and deadlines
next to plain ADK, and how precisely deadlines fire.

Run: .venv/bin/python bench/operations.py [--rounds 24] [--events 2000] [--deadline-runs 200]

1. CPU per streamed event. Separate server processes serve ``samples/``: plain ADK (``adk
   api_server``), adk-cancel as shipped (records and metrics on, no OpenTelemetry SDK),
   adk-cancel with a run and an idle deadline on every run (a watcher per run and a clock read
   per event), and adk-cancel with the Prometheus exporter (``--metrics``: an OpenTelemetry
   SDK records ours, and ADK's own instruments too).
   Each round streams one /run_sse of ``--events`` events from each server, in a rotated
   order, and reads each server's CPU time (utime + stime of the process, from /proc) before
   and after; the session is deleted afterwards, so heaps stay flat. The figure is the median
   of the per-round ratios to plain ADK: wall-clock events/s on a shared machine swing far
   more than 3 %, and even CPU time does from round to round.
2. Deadline firing error. Runs with a short ``X-ADK-Run-Timeout`` (a tool that would take 30
   s) on the adk-cancel server, one at a time and then ``--concurrency`` at a time (one event
   loop serves them all, so its lag shows); each run's record says when the deadline fired
   (``cancelled_at - started_at``), measured by the server: error = that minus the limit.
   Then the same for ``X-ADK-Idle-Timeout``, from the timestamp of the last event the client
   got before the deadline fired. ADK stamps an event when it makes it and hands it on after
   storing it in the session, so this figure also holds ADK's own time per event, which
   grows when several runs share the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx
from _measure import SERVER_SERVICES, pct

from adk_cancel.testing import ServerProcess, run_body, session_path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = SERVER_SERVICES
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
TARGET_RATIO = 1.03
TARGET_FIRE_P99_MS = 50.0


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


async def stream(client: httpx.AsyncClient, url: str, events: int) -> int:
    """One /run_sse of ``events`` events; returns how many arrived. Deletes its session."""
    sid = (await client.post(f"{url}/apps/slow_agent/users/u/sessions", json={})).json()["id"]
    count = 0
    body = run_body(sid, f"fast {events}", streaming=True)
    async with client.stream("POST", f"{url}/run_sse", json=body) as response:
        async for line in response.aiter_lines():
            count += line.startswith("data: ")
    await client.delete(url + session_path(sid))
    return count


async def cpu_rounds(
    servers: dict[str, ServerProcess], rounds: int, events: int
) -> dict[str, list[float]]:
    """CPU microseconds per event, per server, per round."""
    per_event: dict[str, list[float]] = {name: [] for name in servers}
    names = list(servers)
    async with httpx.AsyncClient(timeout=120) as client:
        for server in servers.values():  # warm-up: agents loaded, code paths hot
            for _ in range(2):
                await stream(client, server.url, 200)
        for i in range(rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                server = servers[name]
                before = cpu_s(server.pid)
                got = await stream(client, server.url, events)
                per_event[name].append((cpu_s(server.pid) - before) / got * 1e6)
    return per_event


async def timed_out_record(client: httpx.AsyncClient, runs_path: str) -> dict[str, Any]:
    """The run's record: written as the run leaves the server, just after its client got the
    end of the answer, so the first look may come a moment early."""
    for _ in range(200):
        runs = (await client.get(runs_path, params={"status": "timed_out"})).json()["runs"]
        if runs:
            return dict(runs[0])
        await asyncio.sleep(0.005)
    raise RuntimeError(f"no timed_out record at {runs_path}")


async def fire_errors(url: str, runs: int, concurrency: int) -> dict[str, list[float]]:
    """Milliseconds each deadline fired after its time: run deadlines and idle deadlines."""
    errors: dict[str, list[float]] = {"run": [], "idle": []}
    limits = [0.05, 0.1, 0.2]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int, kind: str) -> None:
            limit = limits[i % len(limits)]
            async with gate:
                sid = (
                    await client.post(f"{url}/apps/slow_agent/users/u/sessions", json={})
                ).json()["id"]
                if kind == "run":
                    headers = {"X-ADK-Run-Timeout": str(limit)}
                    await client.post(f"{url}/run", json=run_body(sid, "tool 30"), headers=headers)
                    stamps: list[float] = []
                else:
                    headers = {"X-ADK-Idle-Timeout": str(limit)}
                    body = run_body(sid, "tool 30", streaming=True)
                    response = await client.post(f"{url}/run_sse", json=body, headers=headers)
                    events = [
                        json.loads(line[6:])
                        for line in response.text.splitlines()
                        if line.startswith("data: ")
                    ]
                    stamps = [e["timestamp"] for e in events if not e.get("errorCode")]
                record = await timed_out_record(client, url + session_path(sid) + "/runs")
                fired_at = record["cancelled_at"]
                # The last event made before the deadline fired (a run may make one more on its
                # way out of the abort); none: the limit counted from the run's start.
                since = max((t for t in stamps if t <= fired_at), default=record["started_at"])
                errors[kind].append((fired_at - since - limit) * 1000)
                await client.delete(url + session_path(sid))

        for kind in ("run", "idle"):
            await asyncio.gather(*(one(i, kind) for i in range(runs)))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--deadline-runs", type=int, default=200)
    parser.add_argument(
        "--concurrency", default="1,4", help="runs at a time, for each series (comma-separated)"
    )
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="serve the deadline series with --no_gc_freeze (full collections pause the loop)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="adk-cancel-ops-bench-") as tmp:
        logs = Path(tmp)
        samples = ROOT / "samples"
        # The CPU comparison runs every adk-cancel server with --no_gc_freeze: plain ADK's
        # collector is left as it is, and a frozen heap would make ours look cheaper.
        ours = (*SERVICES, "--no_chat", "--no_gc_freeze")
        servers = {
            "plain ADK": ServerProcess(samples, *SERVICES, log_path=logs / "plain.log", plain=True),
            "adk-cancel": ServerProcess(samples, *ours, log_path=logs / "ac.log"),
            "+ deadlines": ServerProcess(
                samples, *ours, "--run_timeout_s=600", "--idle_timeout_s=600",
                log_path=logs / "deadlines.log",
            ),
            "+ SDK (--metrics)": ServerProcess(
                samples, *ours, "--metrics", log_path=logs / "sdk.log"
            ),
        }  # fmt: skip
        freeze = "--no_gc_freeze" if args.no_gc_freeze else "--gc_freeze"
        timer = ServerProcess(samples, *SERVICES, "--no_chat", freeze, log_path=logs / "t.log")
        try:
            for server in [*servers.values(), timer]:
                server.start(wait=False)
            for server in [*servers.values(), timer]:
                server.wait_ready()
            per_event = asyncio.run(cpu_rounds(servers, args.rounds, args.events))
            levels = [int(n) for n in args.concurrency.split(",")]
            errors = {n: asyncio.run(fire_errors(timer.url, args.deadline_runs, n)) for n in levels}
        finally:
            for server in [*servers.values(), timer]:
                server.stop()

    plain = per_event["plain ADK"]
    print(
        f"/run_sse server CPU per event: {args.rounds} rounds x {args.events} events, "
        "separate processes, rotated order"
    )
    print(f"{'server':<18}{'us/event p50':>14}{'ratio to plain (median of rounds)':>36}")
    for name, values in per_event.items():
        ratios = [v / p for v, p in zip(values, plain, strict=True)]
        ratio = statistics.median(ratios)
        verdict = ""
        if name != "plain ADK":
            verdict = f"   spread {min(ratios):.3f}-{max(ratios):.3f}, target <= {TARGET_RATIO}: "
            verdict += "ok" if ratio <= TARGET_RATIO else "MISSED"
        print(f"{name:<18}{statistics.median(values):14.1f}{ratio:36.3f}{verdict}")

    print(
        f"\ndeadline firing error (ms after its time, measured by the server), "
        f"{args.deadline_runs} runs per series, adk-cancel api_server {freeze}"
    )
    print(f"{'deadline':<10}{'at a time':>10}{'p50':>8}{'p99':>8}{'max':>8}")
    for level, by_kind in errors.items():
        for kind, values in by_kind.items():
            p99 = pct(values, 0.99)
            verdict = "ok" if p99 < TARGET_FIRE_P99_MS else "MISSED"
            print(
                f"{kind:<10}{level:>10}{statistics.median(values):8.2f}{p99:8.2f}"
                f"{max(values):8.2f}   target p99 < {TARGET_FIRE_P99_MS:g} ms: {verdict}"
            )


if __name__ == "__main__":
    main()
