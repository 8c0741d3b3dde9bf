"""Every write to Redis: announcements, withdrawals, prunes and the heartbeat.

``announce`` and ``withdraw`` run on every run's path, so they only queue; one loop writes the
queue in order, a pipeline per batch, and a heartbeat every TTL/3. A failed write stops the
loop, for the link to reconnect.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import anyio
from redis.asyncio import Redis

from ..._models import RunInfo, SessionKey
from .._base import LocalNode
from ._keys import KeyLayout
from ._wire import dump

Location = tuple[str, str]
"""Where a run's entry is: (hash key, field)."""


@dataclass(frozen=True)
class Op:
    """One queued write."""

    kind: Literal["announce", "withdraw", "prune"]
    run: RunInfo | None = None
    hash_key: str = ""
    fields: tuple[str, ...] = ()


class Writer:
    """The write queue of one connected process, and what Redis holds of its runs."""

    def __init__(self, keys: KeyLayout, node_id: str, ttl_ms: int) -> None:
        self.keys = keys
        self.node_id = node_id
        self.ttl_ms = ttl_ms
        self.queue: asyncio.Queue[Op] = asyncio.Queue()
        self.published: dict[str, Location] = {}
        """run_id -> its entry as last written, to remove what a lost withdraw left. Changed
        only once Redis has a write: one lost in an outage stays listed here, so the snapshot
        after reconnecting removes what it left behind."""

    def discard_queued(self) -> None:
        """Drop what is queued (the snapshot about to be written covers it)."""
        while not self.queue.empty():
            self.queue.get_nowait()

    async def serve(self, client: Redis, node: LocalNode, interval_s: float) -> None:
        """Write batches as they are queued and a heartbeat every ``interval_s``, until
        cancelled; raises what failed a round trip."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + interval_s
        while True:
            wait_s = next_beat - loop.time()
            if wait_s <= 0:
                await self.write_snapshot(client, node.all_runs_here())
                next_beat = loop.time() + interval_s
                continue
            first: Op | None = None
            with anyio.move_on_after(wait_s):
                first = await self.queue.get()
            if first is None:
                continue
            # One loop turn for the writes of the same burst (a cancel marks its run
            # "cancelling", then the run ends and is withdrawn) to share one round trip.
            await asyncio.sleep(0)
            batch = [first]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self.write_batch(client, batch)

    async def write_batch(self, client: Redis, batch: Iterable[Op]) -> None:
        staged = [(op, *self._commands(op)) for op in batch]
        async with client.pipeline(transaction=False) as pipe:
            for _, commands, _ in staged:
                for command in commands:
                    pipe.execute_command(*command)
            if not staged:
                return
            await pipe.execute()
        for op, _, location in staged:
            if op.run is None:
                continue
            if location is None:
                self.published.pop(op.run.run_id, None)
            else:
                self.published[op.run.run_id] = location

    async def write_snapshot(self, client: Redis, runs: list[RunInfo]) -> None:
        """The heartbeat: the node key, and every local run as the registry has it now."""
        published: dict[str, Location] = {}
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(
                self.keys.node(self.node_id),
                json.dumps({"host": socket.gethostname(), "pid": os.getpid()}),
                px=self.ttl_ms,
            )
            for run in runs:
                commands, location = self._commands(Op("announce", run))
                for command in commands:
                    pipe.execute_command(*command)
                assert location is not None
                published[run.run_id] = location
            # Entries a lost withdraw left, including a run's old key after it was re-keyed.
            current = set(published.values())
            for location in self.published.values():
                if location not in current:
                    pipe.hdel(*location)
            await pipe.execute()
        self.published = published

    async def forget(self, client: Redis) -> None:
        """Remove this process's node key and entries, so others stop listing it at once."""
        async with client.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.node(self.node_id))
            for location in self.published.values():
                pipe.hdel(*location)
            await pipe.execute()
        self.published.clear()

    def _commands(self, op: Op) -> tuple[list[tuple[str | int, ...]], Location | None]:
        if op.kind == "prune":
            return [("HDEL", op.hash_key, *op.fields)], None
        run = op.run
        assert run is not None
        hash_key = self.keys.runs(SessionKey(run.app_name, run.user_id, run.session_id))
        run_field = self.keys.run_field(self.node_id, run.run_id)
        if op.kind == "withdraw":
            return [("HDEL", hash_key, run_field)], None
        return [
            ("HSET", hash_key, run_field, dump(run)),
            ("PEXPIRE", hash_key, self.ttl_ms),
        ], (hash_key, run_field)
