"""The chaos test: hundreds of random runs, cancels, disconnects and bad requests against real
server processes, then the invariants read back from the stores (``adk_cancel.testing.chaos``;
``bench/soak.py`` runs the same for thousands of operations)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support import TEST_AGENTS

from adk_cancel.testing.chaos import (
    ChaosReport,
    one_worker,
    two_workers_on_postgres,
    two_workers_on_sqlite,
)

pytestmark = pytest.mark.timeout(900)

SERVER_FLAGS = ("--artifact_service_uri", "memory://", "--cancel_grace_s", "0.3", "--no_chat")


def test_chaos_on_one_worker_with_memory_sessions(tmp_path: Path) -> None:
    with one_worker(
        TEST_AGENTS, tmp_path, *SERVER_FLAGS, seed=1, stubborn_app="stubborn_agent"
    ) as chaos:
        asyncio.run(chaos.round(150))
    report = chaos.report
    print(report.table())
    assert report.failures() == [], report.table()
    assert report.sessions_checked >= 12 and sum(report.operations.values()) == 150
    _told_was_checked(report)


@pytest.mark.parametrize(
    ("store", "two_workers"),
    [("sqlite", two_workers_on_sqlite), ("postgres", two_workers_on_postgres)],
)
def test_chaos_on_two_workers_sharing_a_database_through_redis_with_an_outage(
    tmp_path: Path, store: str, two_workers: Any
) -> None:
    """SQLite (a file both workers open) and a real PostgreSQL server: ADK's two database
    session stores, each read back through ADK's own service for the invariants."""
    with two_workers(
        TEST_AGENTS, tmp_path, *SERVER_FLAGS, seed=2, stubborn_app="stubborn_agent"
    ) as (chaos, redis):

        async def scenario() -> None:
            await chaos.round(120)
            await chaos.outage(redis.stop, redis.start, 40)
            await chaos.round(60)

        asyncio.run(scenario())
    report = chaos.report
    print(report.table())
    assert report.failures() == [], report.table()
    [recovery_s] = report.recovery_s
    assert recovery_s < 5.0, report.table()
    _told_was_checked(report)


def _told_was_checked(report: ChaosReport) -> None:
    # Not a vacuous "0 not told": the cancels did stop runs whose clients stayed to hear it.
    assert report.stopped_runs >= 5 and report.told >= 3, report.table()
    assert report.not_told == [], report.table()
