"""Rejoinable runs: a follower's added latency through another worker, and what keeping a
run's log costs the server per streamed event.

Run: .venv/bin/python bench/rejoin.py [--runs 3] [--words 100] [--rounds 12] [--events 1000]
     (``--runs 0``: the CPU part alone; ``--rounds 0``: the latency part alone)

Latency: a throwaway Redis and two ``adk-cancel api_server`` processes (A, B) serving
``samples/``. Each run streams ``--words`` words 0.1 s apart on A under the disconnect policy
``continue``; this process reads A's ``/run_sse`` directly and, at the same time, follows the
run through B (which reads A's log from Redis Streams) and through A itself. Per event id:
the follower's arrival time minus the direct client's. Goal: p99 under 5 ms through B.

CPU: four server processes, ``memory://`` and ``redis://``, each with the policy ``cancel``
(ids only, no log) and ``continue`` (every event kept, and with Redis written to it). Each
round runs one ``/run_sse`` of ``--events`` events on each, in rotated order, and reads each
server's CPU time from /proc (every thread, ns precision); the session is deleted after each
run so heaps stay flat. Per round: CPU us/event, and on/off ratios; the medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from _measure import cpu_s, pct

from adk_cancel.testing import (
    RedisServer,
    ServerProcess,
    events_path,
    free_port,
    parse_sse,
    run_body,
    session_path,
)

ROOT = Path(__file__).resolve().parent.parent
TARGET_P99_MS = 5.0
MEMORY = ("--session_service_uri", "memory://", "--artifact_service_uri", "memory://")
COMMON = ("--memory_service_uri", "memory://", "--log_level", "warning", "--no_chat")


ID_LINE = re.compile(rb"\nid: (\d+)\n")


async def _stamp(
    url: str,
    arrivals: dict[int, float],
    body: dict[str, object] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Read an SSE stream over a bare socket, noting when each event id arrived; returns the
    run id. Not httpx: three httpx streams cost this process more CPU per event than the
    servers spend, and on two cores that delay, not the servers', would be measured."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    payload = json.dumps(body).encode() if body is not None else b""
    head = [f"{'POST' if body is not None else 'GET'} {parts.path} HTTP/1.1",
            f"Host: {parts.netloc}", "Connection: close", "Accept: text/event-stream"]  # fmt: skip
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    try:
        response = await reader.readuntil(b"\r\n\r\n")
        status = int(response.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"{url}: HTTP {status}")
        match = re.search(rb"(?i)\r\nx-adk-run-id: ([^\r]*)", response)
        run_id = match.group(1).decode() if match else ""
        tail = b"\n"  # the body's first line follows a chunk-size line's newline
        while chunk := await reader.read(65536):
            now = time.perf_counter()
            text = tail + chunk
            for found in ID_LINE.finditer(text):
                arrivals.setdefault(int(found.group(1)), now)
            tail = text[-24:]
    finally:
        writer.close()
    return run_id


async def latency_run(
    client: httpx.AsyncClient, a: ServerProcess, b: ServerProcess, words: int
) -> tuple[list[float], list[float]]:
    sid = (await client.post(f"{a.url}/apps/slow_agent/users/u/sessions", json={})).json()["id"]
    direct: dict[int, float] = {}
    via_b: dict[int, float] = {}
    via_a: dict[int, float] = {}
    body = run_body(sid, f"words {words}", streaming=True)
    headers = {"X-ADK-On-Disconnect": "continue"}
    reader = asyncio.create_task(_stamp(f"{a.url}/run_sse", direct, body, headers))
    while not direct:
        await asyncio.sleep(0.001)
    [run] = (await client.get(a.url + session_path(sid) + "/runs")).json()["runs"]
    path = events_path(sid, run["run_id"])
    await asyncio.gather(
        reader,
        _stamp(b.url + path, via_b),
        _stamp(a.url + path, via_a),
    )
    # The first events were replayed (the followers joined late): only live ones count.
    live = [i for i in direct if i > 3]
    return (
        [(via_b[i] - direct[i]) * 1000 for i in live],
        [(via_a[i] - direct[i]) * 1000 for i in live],
    )


async def latency(workdir: Path, runs: int, words: int) -> None:
    redis = RedisServer(free_port(), workdir).start()
    flags = (f"--session_service_uri=sqlite:///{workdir / 'l.db'}", f"--cancel_backend={redis.url}")
    a, b = (
        ServerProcess(ROOT / "samples", *flags, *COMMON, log_path=workdir / f"{n}.log")
        for n in "ab"
    )
    try:
        for worker in (a, b):
            worker.start(wait=False)
        for worker in (a, b):
            worker.wait_ready()
        through_b: list[float] = []
        through_a: list[float] = []
        async with httpx.AsyncClient(timeout=120) as client:
            await latency_run(client, a, b, 5)  # warm-up
            for _ in range(runs):
                other, own = await latency_run(client, a, b, words)
                through_b += other
                through_a += own
    finally:
        a.stop()
        b.stop()
        redis.stop()
    print(f"Added latency per event vs the direct /run_sse client ({len(through_b)} events):")
    print(f"{'follower':<34}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for label, values in (
        ("through the other worker (Redis)", through_b),
        ("through the holder", through_a),
    ):
        print(f"{label:<34}{pct(values, 0.5):9.2f}{pct(values, 0.99):9.2f}{max(values):9.2f}")
    p99 = pct(through_b, 0.99)
    print(f"goal: p99 through the other worker < {TARGET_P99_MS:g} ms: "
          f"{'ok' if p99 < TARGET_P99_MS else 'MISSED'} ({p99:.2f} ms)")  # fmt: skip


async def cpu_round(
    client: httpx.AsyncClient, server: ServerProcess, events: int, on: bool
) -> float:
    sid = (await client.post(f"{server.url}/apps/slow_agent/users/u/sessions", json={})).json()[
        "id"
    ]
    headers = {"X-ADK-On-Disconnect": "continue" if on else "cancel"}
    before = cpu_s(server.pid)
    response = await client.post(
        f"{server.url}/run_sse",
        json=run_body(sid, f"fast {events}", streaming=True),
        headers=headers,
    )
    used = cpu_s(server.pid) - before
    seen = parse_sse(response.text)
    if len(seen) != events + 1 or seen[-1].id != events + 1:
        raise RuntimeError(f"expected {events + 1} events, got {len(seen)}")
    await client.delete(server.url + session_path(sid))
    return used / (events + 1) * 1e6


async def cpu(workdir: Path, rounds: int, events: int) -> None:
    redis = RedisServer(free_port(), workdir).start()
    servers = {
        "memory": ServerProcess(ROOT / "samples", *MEMORY, *COMMON, log_path=workdir / "m.log"),
        "redis": ServerProcess(
            ROOT / "samples", *MEMORY, *COMMON, f"--cancel_backend={redis.url}",
            log_path=workdir / "r.log",
        ),
    }  # fmt: skip
    try:
        for server in servers.values():
            server.start(wait=False)
        for server in servers.values():
            server.wait_ready()
        modes = [(name, on) for name in servers for on in (False, True)]
        per: dict[tuple[str, bool], list[float]] = {m: [] for m in modes}
        async with httpx.AsyncClient(timeout=120) as client:
            for mode in modes:  # warm-up
                await cpu_round(client, servers[mode[0]], 200, mode[1])
            for i in range(rounds):
                order = modes[i % len(modes) :] + modes[: i % len(modes)]
                for name, on in order:
                    per[(name, on)].append(await cpu_round(client, servers[name], events, on))
    finally:
        for server in servers.values():
            server.stop()
        redis.stop()
    print(f"\nServer CPU per /run_sse event, {rounds} rounds of {events} events (medians):")
    print(f"{'backend':<10}{'log off us':>12}{'log on us':>12}{'on/off':>9}{'added us':>10}")
    for name in servers:
        off, on = per[(name, False)], per[(name, True)]
        ratio = statistics.median(b / a for a, b in zip(off, on, strict=True))
        added = statistics.median(b - a for a, b in zip(off, on, strict=True))
        print(f"{name:<10}{statistics.median(off):12.1f}{statistics.median(on):12.1f}"
              f"{ratio:9.3f}{added:10.1f}")  # fmt: skip
    print("(log off: the policy cancel, ids only; log on: continue, every event kept, and with "
          "Redis written to its stream)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="latency runs")
    parser.add_argument("--words", type=int, default=100, help="events per latency run")
    parser.add_argument("--rounds", type=int, default=12, help="CPU rounds")
    parser.add_argument("--events", type=int, default=1000, help="events per CPU round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adk-cancel-rejoin-bench-") as tmp:
        if args.runs > 0:  # 0: the CPU part alone
            asyncio.run(latency(Path(tmp), args.runs, args.words))
        if args.rounds > 0:  # 0: the latency part alone
            asyncio.run(cpu(Path(tmp), args.rounds, args.events))


if __name__ == "__main__":
    main()
