"""The chaos test: hundreds of random runs, cancels, disconnects and bad requests against real
server processes, then the invariants read back from the stores (``adk_cancel.testing.chaos``;
``bench/soak.py`` runs the same for thousands of operations)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import TEST_AGENTS

from adk_cancel.testing import RedisServer, ServerProcess, free_port
from adk_cancel.testing.chaos import Chaos, Worker, api_events_reader, sqlite_events_reader

pytestmark = pytest.mark.timeout(900)

SERVER_FLAGS = ("--artifact_service_uri", "memory://", "--cancel_grace_s", "0.3", "--no_chat")


def _worker(server: ServerProcess) -> Worker:
    return Worker(server.url, server.pid, server.log)


def test_chaos_on_one_worker_with_memory_sessions(tmp_path: Path) -> None:
    server = ServerProcess(
        TEST_AGENTS,
        "--session_service_uri", "memory://",
        *SERVER_FLAGS,
        log_path=tmp_path / "server.log",
    )  # fmt: skip
    with server:
        chaos = Chaos(
            [_worker(server)], api_events_reader(server.url), seed=1, stubborn_app="stubborn_agent"
        )
        asyncio.run(chaos.round(150))
    report = chaos.report
    print(report.table())
    assert report.failures() == [], report.table()
    assert report.sessions_checked >= 12 and sum(report.operations.values()) == 150


def test_chaos_on_two_workers_sharing_sqlite_through_redis_with_an_outage(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sessions.db"
    with RedisServer(free_port(), tmp_path) as redis:
        flags = [f"--session_service_uri=sqlite:///{db}", f"--cancel_backend={redis.url}"]
        servers = [
            ServerProcess(TEST_AGENTS, *flags, *SERVER_FLAGS, log_path=tmp_path / f"s{i}.log")
            for i in range(2)
        ]
        for server in servers:
            server.start(wait=False)
        try:
            for server in servers:
                server.wait_ready()
            chaos = Chaos(
                [_worker(s) for s in servers],
                sqlite_events_reader(db),
                seed=2,
                shared_sessions=False,
                stubborn_app="stubborn_agent",
            )

            async def scenario() -> None:
                await chaos.round(120)
                await chaos.outage(redis.stop, redis.start, 40)
                await chaos.round(60)

            asyncio.run(scenario())
        finally:
            for server in servers:
                server.stop()
    report = chaos.report
    print(report.table())
    assert report.failures() == [], report.table()
    [recovery_s] = report.recovery_s
    assert recovery_s < 5.0, report.table()
