"""Does a cancel slow down, and what does a run cost in memory, as a worker fills up with
runs? K runs wait in an async tool on one worker; K = 1, 100, 1,000 by default.

Run: .venv/bin/python bench/scale.py [--ks 1,100,1000] [--cancels 200] [--memory-rounds 3]
     [--no-redis]

Servers are separate ``adk-cancel api_server`` / ``adk api_server`` processes serving
``samples/`` (memory session store, CLI defaults), each run a ``/run_sse`` of the scripted
``slow_agent`` told ``tool 3600``: it streams three words, then awaits its tool. A run counts
as waiting once its function call has reached this client.

1. One worker. A server per K, each given K runs; then ``--cancels`` rounds, each of which
   cancels one waiting run on every server (``:cancel``, wait=true: answered once the run
   has stopped and its session was read back and sealed) and starts another so K stays put,
   the servers in an order that alternates from round to round (so this machine's noise of
   the moment falls on every K alike); the figure is the client's round trip of the
   ``:cancel``. Also ``GET .../runs`` of one session. Then every run of the largest K is
   cancelled one by one ("drain": K falling from the largest to 1).
2. Memory. ``--memory-rounds`` pairs of fresh servers (plain ADK, adk-cancel; the order
   alternating) each get K runs (after a warm-up of a few runs); RSS (``VmRSS``) at K minus
   RSS before the first run, per run; the median per K, and the median of the pairs' ratios.
3. The registry in this process (``adk_cancel.RunRegistry``, no server): the time to look up
   one session's runs (what a cancel does) and one user's, with K runs registered.
4. Redis (unless ``--no-redis``): a throwaway ``redis-server`` and two workers A and B. What
   announcing costs per run start: A's CPU per short run next to a ``memory://`` worker's
   (alternating rounds) and Redis commands per run. Then K runs on A, each cancel sent to B
   (B reaches A through Redis), at K = 1 and the largest K.

This client holds K open streams, each over a bare socket (see ``Pool._hold``), and its own
collector is frozen after each fill, so a full collection of its heap does not land in a
measured round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from _measure import cpu_s, pct, rss_kb
from anyio.abc import TaskGroup

from adk_cancel import RunRegistry, SessionKey
from adk_cancel.testing import RedisServer, ServerProcess, free_port, run_body, session_path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
MEMORY = (
    "--session_service_uri=memory://",
    "--artifact_service_uri=memory://",
    "--memory_service_uri=memory://",
    "--log_level=warning",
)
APP = "slow_agent"
TARGET_P99_FACTOR = 1.3
TARGET_RSS_RATIO = 1.03
TARGET_REDIS_P99_MS = 30.0
FILL_AT_ONCE = 16


def settle_client() -> None:
    """Freeze this client's heap (K open streams): its collector then skips them."""
    gc.collect()
    gc.freeze()


class Pool:
    """The waiting runs this client holds on one server, each a /run_sse stream read by a
    task of ``tg`` (which ends them all, by disconnecting, when it is cancelled)."""

    def __init__(self, client: httpx.AsyncClient, url: str, tg: TaskGroup) -> None:
        self.client = client
        self.url = url
        self.tg = tg
        self.waiting: dict[str, anyio.Event] = {}
        """Session id -> set when its stream has ended."""

    async def add(self) -> str:
        sid = (await self.client.post(f"{self.url}/apps/{APP}/users/u/sessions", json={})).json()[
            "id"
        ]
        in_tool, ended = anyio.Event(), anyio.Event()
        self.tg.start_soon(self._hold, sid, in_tool, ended)
        await in_tool.wait()
        self.waiting[sid] = ended
        return sid

    async def _hold(self, sid: str, in_tool: anyio.Event, ended: anyio.Event) -> None:
        """One /run_sse over a bare socket, read until the server ends it. Not httpx: its
        connection pool scans all K connections whenever one opens or closes, and that
        work, in this process, landed in the measured round trips (this client's CPU per
        cancel grew from 18 to 29 ms between K = 1 and K = 1,000; the server's did not)."""
        parts = urlsplit(self.url)
        payload = json.dumps(run_body(sid, "tool 3600", streaming=True)).encode()
        head = (
            f"POST /run_sse HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        writer = None
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(head.encode() + payload)
            seen = b""
            while chunk := await reader.read(65536):
                if not in_tool.is_set():
                    seen = seen[-32:] + chunk
                    if b'"functionCall"' in seen:
                        in_tool.set()
        except OSError:
            pass  # the server went away: the run is over for this pool too
        finally:
            if writer is not None:
                writer.close()
            in_tool.set()
            ended.set()

    async def fill(self, k: int) -> None:
        missing = k - len(self.waiting)
        for start in range(0, missing, FILL_AT_ONCE):
            async with anyio.create_task_group() as tg:
                for _ in range(min(FILL_AT_ONCE, missing - start)):
                    tg.start_soon(self.add)
        settle_client()

    def pick(self, rng: random.Random) -> str:
        return rng.choice(list(self.waiting))

    async def cancel(self, sid: str, via: str | None = None) -> float:
        """Cancel one waiting run (through ``via``, another worker, if given); the round trip
        in ms. Its session is deleted afterwards."""
        url = (via or self.url) + session_path(sid) + ":cancel"
        t0 = time.perf_counter()
        response = await self.client.post(url, json={"reason": "bench"})
        ms = (time.perf_counter() - t0) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"cancel answered {response.status_code}: {response.text}")
        await self.waiting.pop(sid).wait()
        await self.client.delete(self.url + session_path(sid))
        return ms


def client() -> httpx.AsyncClient:
    """The client of every measured request: a few connections, kept alive."""
    return httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32))


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


# -- 1. one worker ------------------------------------------------------------------------------


async def one_worker(urls: dict[int, str], cancels: int) -> dict[str, Any]:
    """K runs on each server of ``urls`` (one per K), and their cancels taken in turns: a
    round cancels one run on each server, in an order that alternates, so the machine's
    noise of the moment falls on every K alike."""
    rng = random.Random(15)
    ks = sorted(urls)
    out: dict[str, Any] = {"cancel": {k: [] for k in ks}, "runs": {k: [] for k in ks}}
    async with client() as http, anyio.create_task_group() as tg:
        pools = {k: Pool(http, urls[k], tg) for k in ks}
        for k in ks:
            for _ in range(5):  # warm-up
                await pools[k].fill(1)
                await pools[k].cancel(pools[k].pick(rng))
            await pools[k].fill(k)
        for i in range(cancels):
            for k in ks if i % 2 == 0 else ks[::-1]:
                pool = pools[k]
                out["cancel"][k].append(await pool.cancel(pool.pick(rng)))
                await pool.add()
                path = session_path(pool.pick(rng)) + "/runs"
                out["runs"][k].append(await timed(lambda p=path, u=urls[k]: http.get(u + p)))
        settle_client()
        top = pools[ks[-1]]
        out["drain"] = [await top.cancel(top.pick(rng)) for _ in range(len(top.waiting))]
        tg.cancel_scope.cancel()
    return out


# -- 2. memory ----------------------------------------------------------------------------------


async def rss_series(server: ServerProcess, ks: list[int]) -> tuple[int, dict[int, int]]:
    """RSS (KB) before the first waiting run, and at each K."""
    at: dict[int, int] = {}
    async with client() as http, anyio.create_task_group() as tg:
        pool = Pool(http, server.url, tg)
        warm = Pool(http, server.url, tg)
        await warm.fill(4)
        await asyncio.sleep(0.5)
        base = rss_kb(server.pid)
        for k in ks:
            await pool.fill(k)
            await asyncio.sleep(0.5)
            at[k] = rss_kb(server.pid)
        tg.cancel_scope.cancel()
    # The warm-up's 4 runs are there all along: K counts only the pool's.
    return base, at


# -- 3. the registry in this process ------------------------------------------------------------


async def registry_lookups(ks: list[int], n: int = 2000) -> dict[int, tuple[float, float]]:
    """Microseconds per look-up of one session's runs, and of one user's, with K runs."""
    out: dict[int, tuple[float, float]] = {}
    for k in ks:
        registry = RunRegistry()
        keys = [SessionKey(APP, f"user{i}", f"s{i}") for i in range(k)]
        for key in keys:
            registry.register(key, "run_sse")
        probe = keys[k // 2]
        t0 = time.perf_counter()
        for _ in range(n):
            registry.runs_here(probe)
        session_us = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for _ in range(n):
            registry.user_runs_here(APP, probe.user_id)
        user_us = (time.perf_counter() - t0) / n * 1e6
        out[k] = (session_us, user_us)
    return out


# -- 4. Redis -----------------------------------------------------------------------------------


def redis_commands(url: str) -> int:
    import redis

    info: dict[str, Any] = redis.Redis.from_url(url).info("stats")
    return int(info["total_commands_processed"])


async def run_cost(servers: dict[str, ServerProcess], redis_url: str, rounds: int, runs: int):
    """Server CPU (ms) per short /run, per server, per round; Redis commands per run."""
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    commands: list[float] = []
    names = list(servers)
    async with client() as http:

        async def batch(server: ServerProcess) -> None:
            for _ in range(runs):
                sid = (
                    await http.post(f"{server.url}/apps/{APP}/users/u/sessions", json={})
                ).json()["id"]
                await http.post(f"{server.url}/run", json=run_body(sid, "quick"))
                await http.delete(server.url + session_path(sid))

        for server in servers.values():
            await batch(server)
        for i in range(rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                server = servers[name]
                before, sent = cpu_s(server.pid), redis_commands(redis_url)
                await batch(server)
                cpu[name].append((cpu_s(server.pid) - before) / runs * 1000)
                if name == "redis://":
                    # Settle: the writer batches announcements for a few ms.
                    await asyncio.sleep(0.05)
                    commands.append((redis_commands(redis_url) - sent) / runs)
    return cpu, commands


async def cross_worker(a: ServerProcess, b: ServerProcess, ks: list[int], cancels: int):
    rng = random.Random(16)
    out: dict[int, list[float]] = {}
    async with client() as http, anyio.create_task_group() as tg:
        pool = Pool(http, a.url, tg)
        for _ in range(5):
            await pool.fill(1)
            await pool.cancel(pool.pick(rng), via=b.url)
        for k in ks:
            await pool.fill(k)
            trips = []
            for _ in range(cancels):
                trips.append(await pool.cancel(pool.pick(rng), via=b.url))
                await pool.add()
            out[k] = trips
        tg.cancel_scope.cancel()
    return out


def line(label: str, values: list[float]) -> str:
    return (
        f"{label:<26}{statistics.median(values):9.2f}{pct(values, 0.99):9.2f}"
        f"{max(values):9.2f}{len(values):6d}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,100,1000", help="active runs (comma-separated)")
    parser.add_argument("--cancels", type=int, default=200, help="cancels measured per K")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--only-redis", action="store_true", help="part 4 alone")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS comparison")
    parser.add_argument(
        "--memory-rounds", type=int, default=3, help="fresh server pairs for the RSS comparison"
    )
    parser.add_argument("--cost-rounds", type=int, default=10)
    parser.add_argument("--cost-runs", type=int, default=20)
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",")})
    top = ks[-1]
    # K streams are K sockets on each side.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * top + 1024)), hard))

    with tempfile.TemporaryDirectory(prefix="adk-cancel-scale-") as tmp:
        logs = Path(tmp)
        if not args.only_redis:
            one_worker_parts(args, ks, top, logs)
        if args.no_redis:
            return
        redis_part(args, ks, top, logs)


def one_worker_parts(args: argparse.Namespace, ks: list[int], top: int, logs: Path) -> None:
    print(
        f"K runs waiting in an async tool on one worker (a server per K, cancels in turns); "
        f"{args.cancels} cancels per K"
    )
    with contextlib.ExitStack() as stack:
        urls = {
            k: stack.enter_context(
                ServerProcess(SAMPLES, *MEMORY, "--no_chat", log_path=logs / f"one-{k}.log")
            ).url
            for k in ks
        }
        result = asyncio.run(one_worker(urls, args.cancels))
    print(f"{'ms':<26}{'p50':>9}{'p99':>9}{'max':>9}{'n':>6}")
    for k in ks:
        print(line(f":cancel round trip K={k}", result["cancel"][k]))
    for k in ks:
        print(line(f"GET /runs K={k}", result["runs"][k]))
    print(line(f"drain {top}..1", result["drain"]))
    p99_1, p99_top = pct(result["cancel"][ks[0]], 0.99), pct(result["cancel"][top], 0.99)
    factor = p99_top / p99_1
    verdict = "ok" if factor <= TARGET_P99_FACTOR else "MISSED"
    print(
        f"cancel p99 K={top} / K={ks[0]}: {factor:.2f}x (target <= {TARGET_P99_FACTOR}x): {verdict}"
    )

    print("\nregistry look-up in this process (adk_cancel.RunRegistry), us")
    print(f"{'K':>6}{'one session':>14}{'one user':>12}")
    for k, (session_us, user_us) in asyncio.run(registry_lookups(ks)).items():
        print(f"{k:>6}{session_us:14.2f}{user_us:12.2f}")

    if not args.no_memory:
        # Fresh servers each round, the order alternating: RSS per run moves by a few KB
        # from one server to the next (the allocator's arenas), so one pair says little.
        per: dict[str, dict[int, list[float]]] = {"plain ADK": {}, "adk-cancel": {}}
        for i in range(args.memory_rounds):
            pair = (("plain ADK", True), ("adk-cancel", False))
            for name, plain in pair if i % 2 == 0 else pair[::-1]:
                extra = () if plain else ("--no_chat",)
                with ServerProcess(
                    SAMPLES, *MEMORY, *extra, plain=plain, log_path=logs / f"rss-{plain}.log"
                ) as server:
                    base, at = asyncio.run(rss_series(server, ks))
                for k in ks:
                    per[name].setdefault(k, []).append((at[k] - base) / k)
        rounds = args.memory_rounds
        print(
            f"\nserver RSS per waiting run (RSS at K minus RSS before the first), KB, median of "
            f"{rounds} fresh server pair(s)"
        )
        print(f"{'K':>6}{'plain ADK':>12}{'adk-cancel':>12}{'ratio':>8}{'ours/run':>10}")
        for k in ks:
            p, o = (statistics.median(per[name][k]) for name in ("plain ADK", "adk-cancel"))
            print(f"{k:>6}{p:12.1f}{o:12.1f}{o / p:8.3f}{o - p:10.1f}")
        ratios = [o / p for o, p in zip(per["adk-cancel"][top], per["plain ADK"][top], strict=True)]
        ratio = statistics.median(ratios)
        verdict = "ok" if ratio <= TARGET_RSS_RATIO else "MISSED"
        print(
            f"RSS per run at K={top}: {ratio:.3f}x plain, median of the pairs' ratios "
            f"({', '.join(f'{r:.3f}' for r in ratios)}; target <= {TARGET_RSS_RATIO}): {verdict}"
        )


def redis_part(args: argparse.Namespace, ks: list[int], top: int, logs: Path) -> None:
    redis_server = RedisServer(free_port(), logs).start()
    try:
        backend = ("--cancel_backend", redis_server.url)
        a = ServerProcess(SAMPLES, *MEMORY, "--no_chat", *backend, log_path=logs / "a.log")
        b = ServerProcess(SAMPLES, *MEMORY, "--no_chat", *backend, log_path=logs / "b.log")
        m = ServerProcess(SAMPLES, *MEMORY, "--no_chat", log_path=logs / "m.log")
        with a, b, m:
            cpu, commands = asyncio.run(
                run_cost(
                    {"memory://": m, "redis://": a},
                    redis_server.url,
                    args.cost_rounds,
                    args.cost_runs,
                )
            )
            cross = asyncio.run(cross_worker(a, b, sorted({ks[0], top}), args.cancels))
    finally:
        redis_server.stop()
    mem_ms, red_ms = statistics.median(cpu["memory://"]), statistics.median(cpu["redis://"])
    print(
        f"\nannounce cost: server CPU per short /run {red_ms:.3f} ms on redis:// vs "
        f"{mem_ms:.3f} ms on memory:// (+{(red_ms - mem_ms) * 1000:.0f} us, median of "
        f"{args.cost_rounds} alternating rounds of {args.cost_runs}); "
        f"{statistics.median(commands):.1f} Redis commands per run"
    )
    print(f"{'cross-worker :cancel, ms':<26}{'p50':>9}{'p99':>9}{'max':>9}{'n':>6}")
    for k, trips in cross.items():
        print(line(f"via B, K={k} on A", trips))
    p99 = pct(cross[top], 0.99)
    verdict = "ok" if p99 < TARGET_REDIS_P99_MS else "MISSED"
    print(
        f"cross-worker p99 at K={top}: {p99:.1f} ms (target < {TARGET_REDIS_P99_MS:g}): {verdict}"
    )


if __name__ == "__main__":
    main()
