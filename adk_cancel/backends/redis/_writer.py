"""Every write to Redis: announcements, withdrawals, prunes, run records and the heartbeat.

``announce``, ``withdraw`` and ``record`` run on every run's path, so they only queue; one loop
writes the queue in order, a pipeline per batch, and a heartbeat every TTL/3. Each queued write
stands alone: one that cannot be built or that Redis refuses (``WRONGTYPE`` on a key someone else
wrote there) is logged once and dropped, and the rest of its batch is written. Only a round
trip that fails (Redis unreachable, not answering) stops the loop, for the link to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..._models import RunInfo, SessionKey
from ..._stream import RunStream, StreamWrite
from .._base import LocalNode
from ._keys import KeyLayout, show
from ._streams import StreamLog
from ._wire import dump

logger = logging.getLogger(__package__)

EVENTS_EVERY_S = 0.02
EVENTS_BURST = 3
"""Event writes go out at once, up to ``EVENTS_BURST`` of them per ``EVENTS_EVERY_S``; past
that, the next waits for the window's end and takes everything queued by then (followers on
other workers see it up to that much later). So only a stream faster than 150 events a
second waits, and two events close together (a model's last word, then ADK's complete event)
are not held apart: each round trip costs the worker 150-300 us of CPU; an event, ~1 ms."""

SNAPSHOT_RUNS = 100
"""Runs per pipeline of a snapshot (see ``Writer.write_snapshot``)."""

HEARTBEAT_KEYS = 500
"""Expiries refreshed per pipeline of a heartbeat (see ``Writer.write_heartbeat``)."""

Location = tuple[str, str]
"""Where a run's entry is: (hash key, field)."""


@dataclass(frozen=True)
class Op:
    """One queued write."""

    kind: Literal["announce", "withdraw", "prune", "events", "record"]
    run: RunInfo | None = None
    hash_key: str = ""
    fields: tuple[str, ...] = ()
    events: tuple[StreamWrite, ...] = ()
    """events: changes to one run's log, in order (a batch joins those of the same log)."""
    keep: int = 0
    """record: how many records the session's list keeps."""
    ttl_ms: int = 0
    """record: how long the list lives after this write."""


@dataclass(frozen=True)
class _Staged:
    """An op turned into commands, waiting for their answers."""

    op: Op
    commands: int
    locations: tuple[Location, ...] | None
    """announce: where the entry now is (its session's hash and its user's); else None."""


class Writer:
    """The write queue of one connected process, and what Redis holds of its runs."""

    def __init__(self, keys: KeyLayout, node_id: str, ttl_ms: int, op_timeout_s: float) -> None:
        self.keys = keys
        self.node_id = node_id
        self.ttl_ms = ttl_ms
        self.op_timeout_s = op_timeout_s
        self.queue: asyncio.Queue[Op] = asyncio.Queue()
        self.published: dict[str, tuple[Location, ...]] = {}
        """run_id -> its entries as last written, to remove what a lost withdraw left. Changed
        only once Redis has a write: one lost in an outage stays listed here, so the snapshot
        after reconnecting removes what it left behind."""
        self._refused: set[str] = set()
        """Runs whose refused write was logged: a heartbeat retries them, quietly."""
        self.streams = StreamLog(keys, ttl_ms)
        """Rejoinable runs' event logs (``_streams.py``)."""
        self._window_start = 0.0
        self._window_writes = 0

    def discard_queued(self) -> None:
        """Drop what is queued (the snapshot about to be written covers it)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.streams.forget()

    async def serve(self, client: Redis, node: LocalNode, interval_s: float) -> None:
        """Write batches as they are queued and a heartbeat every ``interval_s``, until
        cancelled; raises what failed a round trip.

        ``client`` should have no ``socket_timeout``: with one, redis-py sends each pipeline
        from a task of its own (``asyncio.wait_for``), which starts only after every other
        task the event woke (the run's own client, its followers here): 2 ms on a busy
        worker, before a follower on another worker can see the event. Each round trip is
        bounded here instead."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + interval_s
        while True:
            wait_s = next_beat - loop.time()
            if wait_s <= 0:
                with self._bounded():
                    await self.write_heartbeat(client, node)
                next_beat = loop.time() + interval_s
                continue
            first: Op | None = None
            with anyio.move_on_after(wait_s):
                first = await self.queue.get()
            if first is None:
                continue
            if not first.events:
                # One loop turn for the writes of the same burst (a cancel marks its run
                # "cancelling", then the run ends and is withdrawn) to share one round trip.
                await asyncio.sleep(0)
            else:
                # An event goes out before the local clients' sends of it (they wait behind
                # this task): a follower on another worker is as close behind as it can be.
                # A fast stream's events share round trips (see EVENTS_BURST).
                now = loop.time()
                if now - self._window_start >= EVENTS_EVERY_S:
                    self._window_start, self._window_writes = now, 0
                elif self._window_writes >= EVENTS_BURST:
                    await asyncio.sleep(self._window_start + EVENTS_EVERY_S - now)
                    self._window_start, self._window_writes = loop.time(), 0
                self._window_writes += 1
            batch = [first]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            with self._bounded():
                await self.write_batch(client, batch)

    @contextlib.contextmanager
    def _bounded(self) -> Iterator[None]:
        """Raise ``RedisTimeoutError`` if Redis gives no answer within ``op_timeout_s`` of
        time the event loop was free to hear it.

        A deadline the loop itself was late for is moved on, not counted: a run that keeps
        the loop busy for a second (a model streaming from memory never yields) would
        otherwise fail a round trip whose answer had been waiting in the socket, and the
        worker would report an outage, reconnect and rewrite everything. A Redis that hangs
        is still caught on time, since an idle loop is not late."""
        loop = asyncio.get_running_loop()
        bound = self.op_timeout_s
        with anyio.CancelScope() as scope:

            def check(due: float) -> None:
                if loop.time() - due > bound / 4:  # the loop was busy: Redis gets more time
                    arm(loop.time() + bound)
                else:
                    scope.cancel()

            def arm(due: float) -> None:
                timers[:] = [loop.call_at(due, check, due)]

            timers: list[asyncio.TimerHandle] = []
            arm(loop.time() + bound)
            try:
                yield
            finally:
                timers[0].cancel()
        if scope.cancelled_caught:
            raise RedisTimeoutError(f"no answer within {bound:g} s")

    async def write_batch(self, client: Redis, batch: Iterable[Op]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            staged = [s for op in _joined(batch) if (s := self._stage(pipe, op)) is not None]
            if not staged:
                return
            results = await pipe.execute(raise_on_error=False)
        for item, answers in _split(staged, results):
            if (error := _first_error(answers)) is not None:
                self._refuse(item.op, error)
            elif item.op.run is not None and item.op.kind != "record":
                run_id = item.op.run.run_id
                if item.locations is None:
                    self.published.pop(run_id, None)
                    self._refused.discard(run_id)
                else:
                    self.published[run_id] = item.locations

    async def write_heartbeat(self, client: Redis, node: LocalNode) -> None:
        """Every ``interval_s``: this node's key, and the expiry of each hash and event log
        that holds its runs, refreshed; the runs that Redis lists but this process no longer
        holds removed, and those it holds but Redis does not list written (a write the
        queue lost to a burst of outages, reconnects and ends); then the snapshot, only if
        Redis turns out to lack one of the hashes (evicted, flushed) or refused a write.

        A run is written when it changes (``announce``), so a heartbeat rewrites no run that
        Redis lists. Rewriting them all (a JSON document and four commands per run) took a
        worker with a thousand waiting runs some 250 ms every few seconds, and a cancel that
        arrived meanwhile waited for a chunk of it; a refresh costs one command per session,
        packed in pipelines of ``HEARTBEAT_KEYS``."""
        runs = node.all_runs_here()
        if self._refused:
            await self.write_snapshot(client, runs, node.streams_here())
            return
        held = {run.run_id for run in runs}
        stale = [run_id for run_id in self.published if run_id not in held]
        unlisted = [run for run in runs if run.run_id not in self.published]
        gone = set(stale)  # their hashes may go with them: no expiry to refresh there
        hashes = list(
            {
                hash_key
                for run_id, locations in self.published.items()
                if run_id not in gone
                for hash_key, _ in locations
            }
        )
        lacking = False
        for start in range(0, max(len(hashes), 1), HEARTBEAT_KEYS):
            stream_commands = 0
            staged: list[_Staged] = []
            async with client.pipeline(transaction=False) as pipe:
                if start == 0:
                    self._set_node_key(pipe)
                    stream_commands = self.streams.snapshot(pipe, node.streams_here())
                    for run_id in stale:
                        for location in self.published[run_id]:
                            pipe.hdel(*location)
                    staged = [
                        s for run in unlisted if (s := self._stage(pipe, Op("announce", run)))
                    ]
                for hash_key in hashes[start : start + HEARTBEAT_KEYS]:
                    pipe.pexpire(hash_key, self.ttl_ms)
                results = await pipe.execute(raise_on_error=False)
            if start == 0:
                if isinstance(results[0], Exception):
                    raise results[0]  # without its node key this process looks dead
                self.streams.check(results[1 : 1 + stream_commands])
                results = results[1 + stream_commands :]
                removals = sum(len(self.published[run_id]) for run_id in stale)
                for run_id in stale:
                    del self.published[run_id]
                results = results[removals:]
                announced = sum(item.commands for item in staged)
                for item, answers in _split(staged, results[:announced]):
                    run = item.op.run
                    if (error := _first_error(answers)) is not None:
                        self._refuse(item.op, error)
                    elif run is not None and item.locations is not None:
                        self.published[run.run_id] = item.locations
                results = results[announced:]
            lacking = lacking or not all(result == 1 for result in results)
        if lacking:
            await self.write_snapshot(client, node.all_runs_here(), node.streams_here())

    def _set_node_key(self, pipe: Pipeline) -> None:
        pipe.set(
            self.keys.node(self.node_id),
            json.dumps({"host": socket.gethostname(), "pid": os.getpid()}),
            px=self.ttl_ms,
        )

    async def write_snapshot(
        self, client: Redis, runs: list[RunInfo], streams: Sequence[RunStream] = ()
    ) -> None:
        """The snapshot (after a reconnect, or a heartbeat that found keys lacking): the
        node key, every local run as the registry has it now, and the event logs (written
        again where Redis lacks them).

        The runs go in pipelines of ``SNAPSHOT_RUNS`` each: one pipeline of a thousand runs
        kept the event loop busy for tens of milliseconds (packing the commands, then reading
        the answers), and every cancel due meanwhile waited for it."""
        published: dict[str, tuple[Location, ...]] = {}
        current: set[Location] = set()
        chunks = [runs[i : i + SNAPSHOT_RUNS] for i in range(0, len(runs), SNAPSHOT_RUNS)]
        for index, chunk in enumerate(chunks or [[]]):
            first, last = index == 0, index == max(len(chunks) - 1, 0)
            stream_commands = 0
            async with client.pipeline(transaction=False) as pipe:
                if first:
                    self._set_node_key(pipe)
                    # Before the runs: a follower that finds a run listed finds its log too.
                    stream_commands = self.streams.snapshot(pipe, streams)
                staged = [
                    s for run in chunk if (s := self._stage(pipe, Op("announce", run))) is not None
                ]
                current.update(loc for s in staged for loc in s.locations or ())
                if last:
                    # Entries a lost withdraw left, including a run's old key after it was
                    # re-keyed.
                    for locations in self.published.values():
                        for location in locations:
                            if location not in current:
                                pipe.hdel(*location)
                results = await pipe.execute(raise_on_error=False)
            if first:
                if isinstance(results[0], Exception):
                    # Without its node key this process looks dead to the others: an outage.
                    raise results[0]
                self.streams.check(results[1 : 1 + stream_commands])
                results = results[1 + stream_commands :]
            for item, answers in _split(staged, results):
                if (error := _first_error(answers)) is not None:
                    self._refuse(item.op, error)
                elif item.op.run is not None and item.locations is not None:
                    published[item.op.run.run_id] = item.locations
        self.published = published
        self._refused &= {run.run_id for run in runs}

    async def flush(self, client: Redis) -> None:
        """Write what is queued now (the loop that would have has ended)."""
        batch = []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if batch:
            await self.write_batch(client, batch)

    async def forget(self, client: Redis) -> None:
        """Remove this process's node key and entries, so others stop listing it at once."""
        async with client.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.node(self.node_id))
            for locations in self.published.values():
                for location in locations:
                    pipe.hdel(*location)
            await pipe.execute()
        self.published.clear()

    def _stage(self, pipe: Pipeline, op: Op) -> _Staged | None:
        """Queue ``op``'s commands on ``pipe``; None (logged) if it cannot be written."""
        try:
            commands, locations = self._commands(op)
        except Exception as exc:  # nothing should get here; if it does, it is this op's alone
            self._refuse(op, exc)
            return None
        for command in commands:
            pipe.execute_command(*command)
        return _Staged(op, len(commands), locations)

    def _commands(
        self, op: Op
    ) -> tuple[list[tuple[str | int | bytes, ...]], tuple[Location, ...] | None]:
        if op.events:
            return self.streams.commands(op.events), None
        if op.kind == "prune":
            return [("HDEL", op.hash_key, *op.fields)], None
        run = op.run
        assert run is not None
        key = SessionKey(run.app_name, run.user_id, run.session_id)
        if op.kind == "record":
            records = self.keys.records(key)
            return [
                ("LPUSH", records, dump(run)),
                ("LTRIM", records, 0, max(0, op.keep - 1)),
                ("PEXPIRE", records, max(1, op.ttl_ms)),
            ], None
        run_field = self.keys.run_field(self.node_id, run.run_id)
        hashes = (self.keys.runs(key), self.keys.user_runs(run.app_name, run.user_id))
        if op.kind == "withdraw":
            return [("HDEL", hash_key, run_field) for hash_key in hashes], None
        value = dump(run)
        commands: list[tuple[str | int | bytes, ...]] = []
        for hash_key in hashes:
            commands += [("HSET", hash_key, run_field, value), ("PEXPIRE", hash_key, self.ttl_ms)]
        return commands, tuple((hash_key, run_field) for hash_key in hashes)

    def _refuse(self, op: Op, error: BaseException) -> None:
        if op.events:
            self.streams.refused(op.events[0], error)
            return
        run = op.run
        if run is None:  # a prune: housekeeping that the next reader retries
            logger.debug("adk-cancel: Redis refused a prune of %s: %s", op.hash_key, error)
            return
        if run.run_id in self._refused:
            return
        self._refused.add(run.run_id)
        logger.warning(
            "adk-cancel: could not write the %s of run %s of %s to Redis (%s: %s); other "
            "workers may not list or cancel it (or list its record). Other runs are not "
            "affected.",
            {"announce": "announcement", "withdraw": "withdrawal"}.get(op.kind, op.kind),
            run.run_id,
            show(SessionKey(run.app_name, run.user_id, run.session_id)),
            type(error).__name__,
            error,
            exc_info=None if isinstance(error, RedisError) else error,
        )


def _joined(batch: Iterable[Op]) -> list[Op]:
    """The batch with the changes to each run's log joined into one op, where the first
    was: one command per log and batch (redis-py spends some 100 us of the worker's CPU on
    each command of a pipeline; a fast stream queues hundreds of events per batch)."""
    joined: list[Op] = []
    logs: dict[tuple[SessionKey, str], int] = {}
    for op in batch:
        if not op.events:
            joined.append(op)
            continue
        first = op.events[0]
        at = logs.get((first.key, first.run_id))
        if at is None:
            logs[(first.key, first.run_id)] = len(joined)
            joined.append(op)
        else:
            joined[at] = Op("events", events=joined[at].events + op.events)
    return joined


def _split(
    staged: list[_Staged], results: Sequence[object]
) -> Iterable[tuple[_Staged, Sequence[object]]]:
    """Each staged op with the answers to its own commands."""
    start = 0
    for item in staged:
        yield item, results[start : start + item.commands]
        start += item.commands


def _first_error(answers: Sequence[object]) -> BaseException | None:
    return next((a for a in answers if isinstance(a, BaseException)), None)
