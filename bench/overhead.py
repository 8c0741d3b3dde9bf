"""What the cancel layer costs per streamed event: server CPU per ``/run_sse`` event of an
``adk-cancel api_server`` next to plain ADK's ``adk api_server``.

Run: .venv/bin/python bench/overhead.py [--rounds 30] [--events 1000] [--as-shipped] [--pin]

Two server processes serve ``samples/`` (the scripted ``slow_agent``; ``fast N`` streams N
one-word chunks with no delay). Each round streams one ``/run_sse`` of ``--events`` events
from each server, the order alternating from round to round, and reads each server's CPU time
before and after: every thread's ``/proc/PID/task/TID/schedstat`` (nanoseconds;
``/proc/PID/stat``'s utime + stime count 10 ms ticks, too coarse for a 2 % difference in a
half-second round). The session is deleted after each run, so neither heap grows.

The figures: the median of the per-round ratios (adk-cancel / plain), the ratio of the
per-server minimums, and the spread of the per-round ratios. On a shared 2-core machine one
round's ratio swings by tens of percent; only the medians over many alternating rounds say
anything about a 2 % cost.

By default adk-cancel runs with ``--no_gc_freeze`` (plain ADK's collector is left as it is,
and a frozen heap would make ours look cheaper); ``--as-shipped`` keeps the CLI's default.
``--pin`` runs both servers on the last CPU and this client on the others, so the servers
never share a core with the client's reads. ``--control`` adds a second plain ADK server to
the rotation and prints its ratio to the first: what this machine's noise and a server's
place in the order make of two identical servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

import httpx
from _measure import SERVER_SERVICES, cpu_s

from adk_cancel.testing import ServerProcess, run_body, session_path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = SERVER_SERVICES
TARGET_RATIO = 1.02
APP = "slow_agent"


async def stream(client: httpx.AsyncClient, url: str, events: int) -> int:
    """One /run_sse of ``events`` chunks; returns how many events arrived. Deletes its
    session, so the server's heap stays flat from round to round."""
    sid = (await client.post(f"{url}/apps/{APP}/users/u/sessions", json={})).json()["id"]
    count = 0
    body = run_body(sid, f"fast {events}", streaming=True)
    async with client.stream("POST", f"{url}/run_sse", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            count += line.startswith("data: ")
    await client.delete(url + session_path(sid))
    return count


async def rounds(servers: dict[str, ServerProcess], n: int, events: int) -> dict[str, list[float]]:
    """CPU microseconds per event, per server, per round."""
    per_event: dict[str, list[float]] = {name: [] for name in servers}
    names = list(servers)
    async with httpx.AsyncClient(timeout=300) as client:
        for server in servers.values():  # warm-up: agents loaded, code paths hot
            for _ in range(3):
                await stream(client, server.url, events)
        for i in range(n):
            order = names[i % len(names) :] + names[: i % len(names)]
            order = order if i // len(names) % 2 == 0 else order[::-1]
            for name in order:
                server = servers[name]
                before = cpu_s(server.pid)
                got = await stream(client, server.url, events)
                per_event[name].append((cpu_s(server.pid) - before) / got * 1e6)
    return per_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument(
        "--as-shipped", action="store_true", help="adk-cancel with the CLI's default gc_freeze"
    )
    parser.add_argument(
        "--pin", action="store_true", help="servers on the last CPU, this client on the rest"
    )
    parser.add_argument(
        "--control", action="store_true", help="a second plain ADK server, as a noise floor"
    )
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) > 1
    with tempfile.TemporaryDirectory(prefix="adk-cancel-overhead-") as tmp:
        logs = Path(tmp)
        samples = ROOT / "samples"
        ours = (*SERVICES, "--no_chat", *(() if args.as_shipped else ("--no_gc_freeze",)))
        servers = {
            "plain ADK": ServerProcess(samples, *SERVICES, log_path=logs / "plain.log", plain=True),
            "adk-cancel": ServerProcess(samples, *ours, log_path=logs / "ours.log"),
        }
        if args.control:
            servers["plain again"] = ServerProcess(
                samples, *SERVICES, log_path=logs / "plain2.log", plain=True
            )
        try:
            for server in servers.values():
                server.start(wait=False)
            for server in servers.values():
                server.wait_ready()
            if pin:
                for server in servers.values():
                    os.sched_setaffinity(server.pid, {cpus[-1]})
                os.sched_setaffinity(0, set(cpus[:-1]))
            per_event = asyncio.run(rounds(servers, args.rounds, args.events))
        finally:
            for server in servers.values():
                server.stop()

    plain, ours_us = per_event["plain ADK"], per_event["adk-cancel"]
    ratios = [o / p for o, p in zip(ours_us, plain, strict=True)]
    median_ratio = statistics.median(ratios)
    min_ratio = min(ours_us) / min(plain)
    q = statistics.quantiles(ratios, n=4)
    gc_mode = "as shipped (gc_freeze)" if args.as_shipped else "--no_gc_freeze"
    print(
        f"/run_sse server CPU per event: {args.rounds} alternating rounds x {args.events} "
        f"events, separate processes, adk-cancel {gc_mode}{', pinned' if pin else ''}"
    )
    print(f"{'server':<12}{'us/event min':>14}{'p50':>10}{'max':>10}")
    for name, values in per_event.items():
        print(f"{name:<12}{min(values):14.2f}{statistics.median(values):10.2f}{max(values):10.2f}")
    ok = median_ratio <= TARGET_RATIO and min_ratio <= TARGET_RATIO
    print(
        f"adk-cancel / plain: median of per-round ratios {median_ratio:.3f}, ratio of minimums "
        f"{min_ratio:.3f}; per-round spread {min(ratios):.3f}-{max(ratios):.3f} "
        f"(quartiles {q[0]:.3f}-{q[2]:.3f}); target <= {TARGET_RATIO}: "
        + ("ok" if ok else "MISSED")
    )
    if args.control:
        again = per_event["plain again"]
        control = [a / p for a, p in zip(again, plain, strict=True)]
        print(
            f"control, plain again / plain: median {statistics.median(control):.3f}, ratio of "
            f"minimums {min(again) / min(plain):.3f}; spread {min(control):.3f}-{max(control):.3f}"
        )


if __name__ == "__main__":
    main()
