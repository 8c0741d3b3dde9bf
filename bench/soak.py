"""Soak: thousands of random runs, cancels, disconnects and bad requests, then the invariants.

Run: .venv/bin/python bench/soak.py [--operations 2000] [--rounds 2] [--seed 0]
                                     [--setup memory|redis|postgres|both|all]
                                     [--in_flight 8]

The same driver as the chaos test (``adk_cancel.testing.chaos``), for longer, on real
``adk-cancel api_server`` processes serving the test agents (the slow sample agent, and a
stubborn one that only a forced cancel stops):

- ``memory``: one worker, ``memory://`` sessions;
- ``redis``: two workers sharing a ``sqlite:///`` session store through Redis; in the middle
  of the run Redis is killed, operations go on, Redis comes back, and the time until a run
  held by one worker can be cancelled through the other again is measured;
- ``postgres``: the same, the two workers sharing a throwaway PostgreSQL server (started
  here: Debian's ``postgresql`` package and the ``postgres`` extra), read back through ADK's
  ``DatabaseSessionService``;
- ``all`` (the default), or ``both`` (its name from when there were two): every one.

Each round uses fresh sessions and deletes them afterwards, so the servers' RSS after each
round shows growth that is ours, not the session store's. Printed per setup: operations by
kind, 5xx answers, runs still listed afterwards, function calls without a response (read
from the session store), runs a cancel stopped whose client was not told (``event:
cancelled``, ``x-adk-cancel``, close 4000; with examples), broken follow-up turns, log lines
with a traceback / unretrieved task exception / destroyed pending task, RSS per round and
the last round's growth, and the cross-worker recovery time. Exit status 1 if any invariant
broke.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from adk_cancel.testing import RedisServer
from adk_cancel.testing.chaos import (
    Chaos,
    ChaosReport,
    one_worker,
    two_workers_on_postgres,
    two_workers_on_sqlite,
)

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ROOT / "tests" / "agents"
FLAGS = ("--artifact_service_uri=memory://", "--cancel_grace_s=0.3", "--no_chat")


async def _rounds(chaos: Chaos, operations: int, rounds: int) -> None:
    for _ in range(rounds):
        await chaos.round(operations // rounds, sessions=24)


def soak_memory(args: argparse.Namespace, workdir: Path) -> ChaosReport:
    chaos_args = {"seed": args.seed, "in_flight": args.in_flight, "stubborn_app": "stubborn_agent"}
    with one_worker(AGENTS, workdir, *FLAGS, **chaos_args) as chaos:
        asyncio.run(_rounds(chaos, args.operations, args.rounds))
    return chaos.report


def soak_redis(args: argparse.Namespace, workdir: Path) -> ChaosReport:
    return _soak_two_workers(two_workers_on_sqlite, args, workdir)


def soak_postgres(args: argparse.Namespace, workdir: Path) -> ChaosReport:
    return _soak_two_workers(two_workers_on_postgres, args, workdir)


def _soak_two_workers(
    two_workers: Callable[..., AbstractContextManager[tuple[Chaos, RedisServer]]],
    args: argparse.Namespace,
    workdir: Path,
) -> ChaosReport:
    chaos_args = {"seed": args.seed, "in_flight": args.in_flight, "stubborn_app": "stubborn_agent"}
    with two_workers(AGENTS, workdir, *FLAGS, **chaos_args) as (chaos, redis):

        async def scenario() -> None:
            half = args.operations // 2
            await chaos.round(half, sessions=24)
            await chaos.outage(redis.stop, redis.start, max(20, args.operations // 20))
            await chaos.round(args.operations - half, sessions=24)

        asyncio.run(scenario())
    return chaos.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=2000, help="per setup")
    parser.add_argument("--rounds", type=int, default=2, help="memory setup: rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in_flight", type=int, default=8)
    parser.add_argument(
        "--setup", choices=["memory", "redis", "postgres", "both", "all"], default="all"
    )
    args = parser.parse_args()

    broken = False
    with tempfile.TemporaryDirectory(prefix="adk-cancel-soak-") as tmp:
        setups = (("memory", soak_memory), ("redis", soak_redis), ("postgres", soak_postgres))
        for setup, soak in setups:
            if args.setup not in (setup, "both", "all"):
                continue
            began = time.monotonic()
            workdir = Path(tmp) / setup
            workdir.mkdir()
            report = soak(args, workdir)
            took = time.monotonic() - began
            title = {
                "memory": "one worker, memory:// sessions",
                "redis": "two workers, sqlite:/// sessions, Redis killed and restarted once",
                "postgres": "two workers, PostgreSQL sessions, Redis killed and restarted once",
            }[setup]
            print(f"\n== soak: {title} ({took:.0f} s, seed {args.seed})")
            print(report.table())
            failures = report.failures()
            for line in failures[:20]:
                print("  BROKEN", line)
            print(f"invariants: {'all held' if not failures else f'{len(failures)} broken'}")
            broken = broken or bool(failures)
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
