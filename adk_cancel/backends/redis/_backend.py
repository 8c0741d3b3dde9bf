"""``RedisBackend``: list and cancel the runs other processes hold, through Redis.

A cross-process cancel: HGETALL the session's hash, PUBLISH one request per holding node
(PUBLISH counts the subscribers, so a node that is not listening is known at once), each
holder runs its registry's ``cancel_here`` and PUBLISHes its ``CancelledRun`` list back; the
requester waits for every reply, at most ``timeout_s + reply_margin_s`` (wait=true) or
``ack_timeout_s`` (wait=false). No polling anywhere on that path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import anyio
from redis.asyncio import Redis

from ..._models import CancelledRun, RunInfo, SessionKey
from ..._order import CancelOrder
from ..._stream import StreamPage, StreamWrite
from .. import _url as _options
from .._base import BackendUnavailable, LeaseAnswer, LeaseMode, LocalNode
from ._keys import KeyLayout, show
from ._lease import LEASE_POLL_S, RedisLeases, stop_task
from ._link import FAILURES, Link, State, not_connected
from ._streams import StreamReader
from ._wire import CancelMessage, ReplyMessage, dump, parse_message, parse_run
from ._writer import Op

logger = logging.getLogger(__package__)


@dataclass
class _Pending:
    """Replies awaited by one cancel_remote call."""

    expected: set[str]
    replies: dict[str, list[CancelledRun]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    failure: BaseException | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def settle(self) -> None:
        if self.failure is not None or self.expected <= (self.replies.keys() | self.errors.keys()):
            self.done.set()


class RedisBackend:
    """Connects the run registries of several server processes through one Redis.

    Every process announces its active runs with a TTL, lists other processes' runs of a
    session from a per-session hash, and sends cancels to the processes that hold runs over
    their pub/sub channel; the holder cancels through its registry and publishes the outcome
    back. While Redis is unreachable, runs and local cancels go on; cross-process calls raise
    ``BackendUnavailable`` and the backend reconnects and re-announces by itself.
    """

    def __init__(
        self,
        url: str,
        *,
        announce_ttl_s: float | None = None,
        key_prefix: str | None = None,
        op_timeout_s: float | None = None,
        ack_timeout_s: float | None = None,
        reply_margin_s: float | None = None,
        reconnect_interval_s: float | None = None,
    ) -> None:
        _options.check_options(url)  # an unknown option: refused here, not by redis-py later
        redis_url, options = _options.split_options(url)
        self.url = redis_url
        self.display_url = _options.redact(redis_url)
        # A crashed process's runs stay listed this long; heartbeats run every third of it.
        self.announce_ttl_s = _options.positive("announce_ttl_s", announce_ttl_s, options, 15.0)
        # Bounds every Redis round trip, so an unreachable Redis answers 503 quickly.
        self.op_timeout_s = _options.positive("op_timeout_s", op_timeout_s, options, 0.5)
        # wait=false: how long to wait for the holder's "cancel signalled".
        self.ack_timeout_s = _options.positive("ack_timeout_s", ack_timeout_s, options, 2.0)
        # wait=true: the holder waits timeout_s itself; this covers the round trips.
        self.reply_margin_s = _options.positive("reply_margin_s", reply_margin_s, options, 1.0)
        self.reconnect_interval_s = _options.positive(
            "reconnect_interval_s", reconnect_interval_s, options, 1.0
        )
        self.key_prefix = _options.prefix(key_prefix, options)
        self._link: Link | None = None
        self._pending: dict[str, _Pending] = {}
        self._reader = StreamReader(self.url, self.display_url, self.keys, self.op_timeout_s)
        self._leases = RedisLeases(self.keys, self.announce_ttl_s)
        self._renewal: asyncio.Task[None] | None = None

    lease_poll_s: float | None = LEASE_POLL_S

    @property
    def keys(self) -> KeyLayout:
        """Names of the keys and channels this backend uses."""
        return KeyLayout(self.key_prefix)

    @property
    def connected(self) -> bool:
        """Whether Redis is reachable right now (cross-process calls will be tried)."""
        return self._link is not None and self._link.state is State.UP

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self, node: LocalNode) -> None:
        if self._link is not None:
            raise RuntimeError("RedisBackend.connect() called twice: call disconnect() first")
        link = Link(
            url=self.url,
            display_url=self.display_url,
            keys=self.keys,
            node=node,
            announce_ttl_s=self.announce_ttl_s,
            op_timeout_s=self.op_timeout_s,
            reconnect_interval_s=self.reconnect_interval_s,
            on_message=self._dispatch,
            on_down=self._fail_pending,
        )
        self._link = link
        try:
            await link.start()
        except BaseException:
            self._link = None
            raise
        # Owned here, ended by disconnect(): the session leases this process holds.
        self._renewal = asyncio.create_task(
            self._leases.keep(lambda: link.client, (*FAILURES, BackendUnavailable)),
            name=f"adk-cancel lease renewal {node.node_id}",
        )

    async def disconnect(self) -> None:
        link = self._link
        if link is None:
            return
        self._fail_pending(BackendUnavailable("the cancel backend is shutting down"))
        renewal, self._renewal = self._renewal, None
        try:
            await stop_task(renewal)
        finally:
            await link.stop()
            await self._reader.close()
            self._link = None

    # -- writes -----------------------------------------------------------------------------

    def announce(self, run: RunInfo) -> None:
        if self._link is not None:
            self._link.submit(Op("announce", run))

    def withdraw(self, run: RunInfo) -> None:
        if self._link is not None:
            self._link.submit(Op("withdraw", run))

    def publish_events(self, write: StreamWrite) -> None:
        if self._link is not None:
            self._link.submit(Op("events", events=(write,)))

    def save_record(self, record: RunInfo, keep: int, ttl_s: float) -> None:
        # Queued like an announcement; a record of a run that ends while Redis is down stays
        # on its worker only (the snapshot written on reconnecting covers active runs).
        if self._link is not None and keep > 0:
            self._link.submit(Op("record", record, keep=keep, ttl_ms=max(1, int(ttl_s * 1000))))

    # -- reads and cancels ------------------------------------------------------------------

    async def _ready(self) -> tuple[Link, Redis]:
        link = self._link
        if link is None:
            raise not_connected(self.display_url)
        return link, await link.ready()

    async def read_events(
        self, key: SessionKey, run_id: str, after: int, wait_s: float
    ) -> StreamPage | None:
        link = self._link
        if link is None:
            raise not_connected(self.display_url)
        if link.state is not State.UP:
            await link.ready()  # raises while Redis is unreachable
        return await self._reader.read(key, run_id, after, wait_s)

    async def list_remote(self, key: SessionKey) -> list[RunInfo]:
        return await self._list(lambda keys: keys.runs(key))

    async def list_user_remote(self, app_name: str, user_id: str) -> list[RunInfo]:
        return await self._list(lambda keys: keys.user_runs(app_name, user_id))

    async def _list(self, hash_of: Callable[[KeyLayout], str]) -> list[RunInfo]:
        link, client = await self._ready()
        try:
            holders = await self._holders(link, client, hash_of(link.keys))
        except FAILURES as exc:
            raise link.error_for(exc) from exc
        return [run for runs in holders.values() for run in runs]

    async def list_records(self, key: SessionKey, limit: int) -> list[RunInfo]:
        if limit <= 0:
            return []
        link, client = await self._ready()
        try:
            values = cast("list[str]", await client.lrange(link.keys.records(key), 0, limit - 1))
        except FAILURES as exc:
            raise link.error_for(exc) from exc
        records = []
        for value in values:
            try:
                records.append(parse_run(value))
            except ValueError:
                continue  # not ours: anyone with access to Redis can write there
        return records

    @staticmethod
    def _hash_of(keys: KeyLayout, order: CancelOrder) -> str:
        """The hash listing the runs an order is for: its session's, or its user's."""
        if order.scope == "user":
            return keys.user_runs(order.key.app_name, order.key.user_id)
        return keys.runs(order.key)

    async def _holders(
        self, link: Link, client: Redis, hash_key: str, *, check_alive: bool = True
    ) -> dict[str, list[RunInfo]]:
        """Runs in one of our hashes (a session's, a user's) held by other live processes, by
        node id (without ``check_alive``, also those of processes that died within the last
        TTL)."""
        # decode_responses=True: redis-py's bytes-or-str annotation is wider than what comes back.
        entries = cast("dict[str, str]", await client.hgetall(hash_key))
        by_node: dict[str, list[tuple[str, RunInfo]]] = {}
        garbage: list[str] = []
        for run_field, value in entries.items():
            node_id = KeyLayout.node_of(run_field)
            if node_id == link.node.node_id:
                continue
            try:
                if node_id is None:
                    raise ValueError("not a field this backend writes")
                run = parse_run(value)
            except ValueError:
                garbage.append(run_field)
                continue
            by_node.setdefault(node_id, []).append((run_field, run))
        dead = await self._dead(link, client, list(by_node)) if check_alive else set()
        now = time.time()
        holders: dict[str, list[RunInfo]] = {}
        for node_id, runs in by_node.items():
            if node_id in dead:
                garbage.extend(run_field for run_field, _ in runs)
                continue
            holders[node_id] = [
                run.model_copy(
                    update={"elapsed_ms": round(max(0.0, now - run.started_at) * 1000, 3)}
                )
                for _, run in runs
            ]
        if garbage:
            link.submit(Op("prune", hash_key=hash_key, fields=tuple(garbage)))
        return holders

    async def _dead(self, link: Link, client: Redis, nodes: list[str]) -> set[str]:
        """The nodes whose liveness key has expired."""
        if not nodes:
            return set()
        alive = await client.mget([link.keys.node(n) for n in nodes])
        return {n for n, is_alive in zip(nodes, alive, strict=True) if is_alive is None}

    async def cancel_remote(self, order: CancelOrder) -> list[CancelledRun]:
        invocation_id = order.invocation_id
        link, client = await self._ready()
        hash_key = self._hash_of(link.keys, order)
        try:
            # Liveness is checked after publishing, and only for the nodes nobody heard:
            # one round trip less on the common path. Read on the sender's connection, as
            # the order goes out: without a socket timeout, redis-py sends it at once rather
            # than from a task of its own behind the loop's other work.
            with anyio.fail_after(self.op_timeout_s):
                holders = await self._holders(link, link.sender, hash_key, check_alive=False)
        except FAILURES as exc:
            raise link.error_for(exc) from exc
        if invocation_id is not None:
            # A run that has not learnt its invocation id yet may still be the one: ask.
            holders = {
                n: [r for r in runs if r.invocation_id in (invocation_id, None)]
                for n, runs in holders.items()
            }
        if order.run_id is not None:
            holders = {
                n: [r for r in runs if r.run_id == order.run_id] for n, runs in holders.items()
            }
        holders = {n: runs for n, runs in holders.items() if runs}
        if not holders:
            return []

        request_id = uuid.uuid4().hex
        pending = _Pending(expected=set(holders))
        self._pending[request_id] = pending
        message = dump(
            CancelMessage(request_id=request_id, reply_to=link.node.node_id, order=order)
        )
        try:
            with anyio.fail_after(self.op_timeout_s):
                async with link.sender.pipeline(transaction=False) as pipe:
                    for node_id in holders:
                        pipe.publish(link.keys.channel(node_id), message)
                    receivers = await pipe.execute()
            deaf = [n for n, count in zip(list(holders), receivers, strict=True) if not count]
            pending.expected.difference_update(deaf)
            pending.settle()
            if deaf:
                # Not subscribed: crashed (listed until its TTL runs out) or reconnecting.
                dead = await self._dead(link, client, deaf)
                fields = [
                    link.keys.run_field(node_id, run.run_id)
                    for node_id in dead
                    for run in holders.pop(node_id)
                ]
                if fields:
                    link.submit(Op("prune", hash_key=hash_key, fields=tuple(fields)))
            deadline = order.timeout_s + self.reply_margin_s if order.wait else self.ack_timeout_s
            with anyio.move_on_after(deadline):
                await pending.done.wait()
        except FAILURES as exc:
            raise link.error_for(exc) from exc
        finally:
            self._pending.pop(request_id, None)
        if pending.failure is not None:
            raise pending.failure
        return self._outcomes(order, holders, pending)

    def _outcomes(
        self, order: CancelOrder, holders: dict[str, list[RunInfo]], pending: _Pending
    ) -> list[CancelledRun]:
        """Each holder's reply, and "not stopped" for the runs of those that gave none."""
        results: list[CancelledRun] = []
        for node_id, runs in holders.items():
            if node_id in pending.replies:
                results.extend(pending.replies[node_id])
                continue
            if node_id in pending.errors:
                why = f"it failed: {pending.errors[node_id]}"
            elif node_id in pending.expected:
                why = "it did not answer in time"
            else:
                why = "it is not listening (crashed, or reconnecting to Redis)"
            logger.warning(
                "adk-cancel: worker %s holds %d run(s) of %s but %s; reporting them as "
                "not stopped.",
                node_id,
                len(runs),
                show(order.key),
                why,
            )
            results.extend(
                CancelledRun(
                    run_id=run.run_id,
                    session_id=run.session_id,
                    invocation_id=run.invocation_id,
                    route=run.route,
                    worker=run.worker,
                    stopped=False,
                )
                for run in runs
                if order.matches(run.invocation_id, run.run_id)
            )
        return results

    # -- session leases (see _lease.py) -----------------------------------------------------

    async def acquire_lease(
        self, key: SessionKey, node_id: str, run_id: str, mode: LeaseMode, max_queued: int
    ) -> LeaseAnswer:
        link, client = await self._ready()
        try:
            return await self._leases.acquire(client, key, node_id, run_id, mode, max_queued)
        except FAILURES as exc:
            raise link.error_for(exc) from exc

    async def release_lease(self, key: SessionKey, node_id: str, run_id: str) -> None:
        link, client = await self._ready()
        try:
            await self._leases.release(client, key, node_id, run_id)
        except FAILURES as exc:
            raise link.error_for(exc) from exc

    def _fail_pending(self, exc: BaseException) -> None:
        for pending in self._pending.values():
            pending.failure = exc
            pending.settle()

    # -- pub/sub ----------------------------------------------------------------------------

    def _dispatch(self, data: bytes) -> None:
        link = self._link
        if link is None:
            return
        try:
            message = parse_message(data)
        except ValueError:
            logger.debug("adk-cancel: ignoring a malformed message on %s", link.node.node_id)
            return
        if isinstance(message, CancelMessage):
            work = functools.partial(self._serve_cancel, link, message)
            link.spawn(work, name=f"adk-cancel serving a cancel from {message.reply_to}")
            return
        pending = self._pending.get(message.request_id)
        if pending is None:
            return  # the requester gave up waiting; its timeout already reported this
        if message.error is not None:
            pending.errors[message.node] = message.error
        else:
            pending.replies[message.node] = message.runs
        pending.settle()

    async def _serve_cancel(self, link: Link, message: CancelMessage) -> None:
        reply = ReplyMessage(request_id=message.request_id, node=link.node.node_id)
        try:
            reply.runs = await link.node.cancel_here(message.order)
        except Exception as exc:
            logger.exception("adk-cancel: a cancel sent by worker %s failed", message.reply_to)
            reply.error = f"{type(exc).__name__}: {exc}"
        try:
            with anyio.fail_after(self.op_timeout_s):
                await link.sender.publish(link.keys.channel(message.reply_to), dump(reply))
        except FAILURES as exc:
            logger.warning(
                "adk-cancel: could not send the outcome of a cancel to worker %s: %s",
                message.reply_to,
                link.error_for(exc),
            )
