"""``redis://``: share runs and cancels between server processes through Redis.

Layout (prefix ``adk-cancel`` by default; ids are percent-encoded so any character is safe):

- ``{prefix}:node:{node}``: string with a TTL; the process is alive. Refreshed every TTL/3.
- ``{prefix}:runs:{app}/{user}/{session}``: hash ``{node}/{run_id}`` -> ``RunInfo`` JSON, with
  the same TTL refreshed by the holders. One HGETALL plus one MGET of the holders' node keys
  lists a session; entries of a node whose key has expired (a crashed process) are skipped
  and pruned.
- ``{prefix}:chan:{node}``: the pub/sub channel of one process. Cancel requests for its runs
  arrive there, and so do the replies to the cancels it sent (matched by request id).

A cross-process cancel: HGETALL the session's hash, PUBLISH one request per holding node
(PUBLISH counts the subscribers, so a node that is not listening is known at once), each
holder runs its registry's ``cancel`` and PUBLISHes its ``CancelledRun`` list back; the
requester waits for every reply, at most ``timeout_s + reply_margin_s`` (wait=true) or
``ack_timeout_s`` (wait=false). No polling anywhere on that path.

Options can also be given as query parameters of the URL (``?announce_ttl_s=5``); they are
removed before the URL reaches redis-py. Keyword arguments win over the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, Field, TypeAdapter
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._models import CancelledRun, RunInfo, SessionKey
from .._order import CancelOrder
from ._base import BackendUnavailable, LocalNode

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

_OPTION_NAMES = (
    "announce_ttl_s",
    "key_prefix",
    "op_timeout_s",
    "ack_timeout_s",
    "reply_margin_s",
    "reconnect_interval_s",
)
# Errors that mean "Redis cannot be reached", as opposed to Redis answering with an error.
_UNREACHABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)
_FIRST_RETRY_S = 0.05
"""First reconnect delay; it doubles up to reconnect_interval_s. Short, since a restarted
Redis is usually back within a second."""


@dataclass
class _Op:
    kind: Literal["announce", "withdraw", "prune", "wake"]
    run: RunInfo | None = None
    hash_key: str = ""
    fields: tuple[str, ...] = ()


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


class _CancelMessage(BaseModel):
    """Sent on a holder's channel."""

    type: Literal["cancel"] = "cancel"
    request_id: str
    reply_to: str
    order: CancelOrder


class _ReplyMessage(BaseModel):
    """Sent back on the requester's channel: the holder's outcome, or why it failed."""

    type: Literal["reply"] = "reply"
    request_id: str
    node: str
    runs: list[CancelledRun] = Field(default_factory=list)
    error: str | None = None


_MESSAGE: TypeAdapter[_CancelMessage | _ReplyMessage] = TypeAdapter(
    Annotated[_CancelMessage | _ReplyMessage, Field(discriminator="type")]
)


def _split_options(url: str) -> tuple[str, dict[str, str]]:
    base, _, query = url.partition("?")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _OPTION_NAMES:
            ours[name] = value
        else:
            theirs.append((name, value))
    if not ours:
        return url, ours
    # Cut the query by hand: urlunsplit would turn unix:///path into unix:/path.
    return (f"{base}?{urlencode(theirs)}" if theirs else base), ours


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _positive(name: str, given: float | None, from_url: dict[str, str], default: float) -> float:
    raw: Any = given if given is not None else from_url.get(name, default)
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"RedisBackend option {name}={raw!r} is not a number") from exc
    if not value > 0:
        raise ValueError(f"RedisBackend option {name}={raw!r} must be greater than 0")
    return value


async def _wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """``wait_for(event.wait(), timeout)`` without its Python 3.11 flaw: when the event is set
    just as the caller is cancelled, wait_for returns and the cancellation is lost."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout_s)
    finally:
        waiter.cancel()
    return event.is_set()


async def _get(queue: asyncio.Queue[_Op], timeout_s: float) -> _Op | None:
    """The next item within ``timeout_s``, or None; cancellable like ``_wait_event``."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    try:
        await asyncio.wait({getter}, timeout=timeout_s)
    finally:
        if not getter.done():
            getter.cancel()
    return getter.result() if getter.done() and not getter.cancelled() else None


async def _bounded(awaitable: Awaitable[object], timeout_s: float) -> None:
    """Await within ``timeout_s`` or raise redis' TimeoutError (cancellable, unlike 3.11's
    wait_for, see ``_wait_event``)."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    finally:
        if not task.done():
            task.cancel()
    if not done:
        raise RedisTimeoutError(f"no answer within {timeout_s:g} s")
    task.result()


async def _end_tasks(tasks: list[asyncio.Task[None]]) -> None:
    # Cancel again while any is left: a cancellation can be swallowed by a wait that finished
    # in the same loop turn, and the loops also stop on ``_closing``.
    pending = set(tasks)
    for _ in range(20):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    logger.warning("adk-cancel: %d Redis backend task(s) did not stop: %s", len(pending), pending)


async def _aclose(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


def _enc(part: str) -> str:
    return quote(part, safe="")


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
        redis_url, options = _split_options(url)
        self.url = redis_url
        self.display_url = _redact(redis_url)
        # A crashed process's runs stay listed this long; heartbeats run every third of it.
        self.announce_ttl_s = _positive("announce_ttl_s", announce_ttl_s, options, 15.0)
        # Bounds every Redis round trip, so an unreachable Redis answers 503 quickly.
        self.op_timeout_s = _positive("op_timeout_s", op_timeout_s, options, 0.5)
        # wait=false: how long to wait for the holder's "cancel signalled".
        self.ack_timeout_s = _positive("ack_timeout_s", ack_timeout_s, options, 2.0)
        # wait=true: the holder waits timeout_s itself; this covers the round trips.
        self.reply_margin_s = _positive("reply_margin_s", reply_margin_s, options, 1.0)
        self.reconnect_interval_s = _positive(
            "reconnect_interval_s", reconnect_interval_s, options, 1.0
        )
        prefix = key_prefix if key_prefix is not None else options.get("key_prefix", "adk-cancel")
        if not prefix:
            raise ValueError("RedisBackend option key_prefix must not be empty")
        self.key_prefix = prefix

        self._node: LocalNode | None = None
        self._node_id = ""
        self._client: Redis | None = None
        self._sub_client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ops: asyncio.Queue[_Op] | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._pending: dict[str, _Pending] = {}
        # run_id -> (hash key, field) as last written, to withdraw what a lost withdraw left.
        self._published: dict[str, tuple[str, str]] = {}
        self._up = False
        self._accepting = False
        self._closing = False
        self._outage_logged = False
        self._last_error: BaseException | None = None
        self._kick: asyncio.Event | None = None
        self._attempt_done: asyncio.Event | None = None
        self._last_attempt_end = 0.0

    # -- keys -------------------------------------------------------------------------------

    def _node_key(self, node_id: str) -> str:
        return f"{self.key_prefix}:node:{_enc(node_id)}"

    def _channel(self, node_id: str) -> str:
        return f"{self.key_prefix}:chan:{_enc(node_id)}"

    def _runs_key(self, app_name: str, user_id: str, session_id: str) -> str:
        return f"{self.key_prefix}:runs:{_enc(app_name)}/{_enc(user_id)}/{_enc(session_id)}"

    def _run_field(self, run: RunInfo) -> str:
        return self._run_field_of(self._node_id, run)

    def _run_field_of(self, node_id: str, run: RunInfo) -> str:
        return f"{_enc(node_id)}/{run.run_id}"

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.announce_ttl_s * 1000))

    @property
    def connected(self) -> bool:
        """Whether Redis is reachable right now (cross-process calls will be tried)."""
        return self._up

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self, node: LocalNode) -> None:
        if self._node is not None:
            raise RuntimeError("RedisBackend.connect() called twice: call disconnect() first")
        self._node = node
        self._node_id = node.node_id
        self._loop = asyncio.get_running_loop()
        self._ops = asyncio.Queue()
        self._kick = asyncio.Event()
        self._attempt_done = asyncio.Event()
        self._closing = False
        self._outage_logged = False
        common: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": self.op_timeout_s,
            "socket_connect_timeout": self.op_timeout_s,
            "client_name": f"adk-cancel:{_enc(self._node_id)}"[:120],
        }
        # Commands: one immediate retry on a fresh connection when a pooled one turns out to
        # be closed (an idle timeout, a proxy); no retry on timeouts, no backoff, so a down or
        # hanging Redis still answers 503 within op_timeout_s.
        self._client = Redis.from_url(
            self.url, retry=Retry(NoBackoff(), 1, (RedisConnectionError,)), **common
        )
        # The subscription: no retry at all. Its EOF is how an outage or a restart (which
        # loses every key) is noticed, and a silent resubscribe would hide that. No read
        # timeout: redis-py before 8.x applies socket_timeout to a blocking get_message (its
        # issue #4098), which would end an idle subscription every op_timeout_s. A Redis that
        # hangs without closing the socket is noticed by the heartbeat's writes instead.
        self._sub_client = Redis.from_url(
            self.url, retry=Retry(NoBackoff(), 0), **{**common, "socket_timeout": None}
        )
        # Startup must not fail because Redis is down: the first attempt logs, the loop retries.
        await self._attempt_connect()
        self._main_task = asyncio.create_task(
            self._main(), name=f"adk-cancel redis backend {self._node_id}"
        )

    async def disconnect(self) -> None:
        if self._node is None:
            return
        self._closing = True
        self._accepting = False
        was_up = self._up
        self._up = False
        self._fail_pending(BackendUnavailable("the cancel backend is shutting down"))
        await _end_tasks([t for t in (self._main_task, self._reader_task, *self._handlers) if t])
        self._main_task = self._reader_task = None
        self._handlers.clear()
        client = self._client
        if client is not None and was_up:
            # Other processes stop listing this one at once rather than after the TTL.
            with contextlib.suppress(*_FAILURES, asyncio.TimeoutError):
                await asyncio.wait_for(self._forget_self(client), self.op_timeout_s * 2)
        await self._close_pubsub()
        for each in (client, self._sub_client):
            if each is not None:
                with contextlib.suppress(*_FAILURES):
                    await each.aclose()
        self._client = self._sub_client = None
        self._node = None
        self._published.clear()

    async def _forget_self(self, client: Redis) -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.delete(self._node_key(self._node_id))
            for hash_key, run_field in self._published.values():
                pipe.hdel(hash_key, run_field)
            await pipe.execute()

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*_FAILURES):
                await _aclose(pubsub)

    # -- connection state -------------------------------------------------------------------

    async def _main(self) -> None:
        """Owns every write to Redis (ordered) and the reconnects."""
        assert self._kick is not None
        retry_s = _FIRST_RETRY_S
        while not self._closing:
            try:
                if self._up:
                    retry_s = _FIRST_RETRY_S
                    await self._serve()
                    continue
                if await self._attempt_connect():
                    continue
            except Exception:
                # A bug here (or in the registry's all_runs) must not stop the heartbeats
                # for good: log it and go on after a pause.
                logger.exception("adk-cancel: the Redis backend's loop failed; retrying")
                await asyncio.sleep(self.reconnect_interval_s)
                continue
            await _wait_event(self._kick, retry_s)
            self._kick.clear()
            retry_s = min(retry_s * 2, self.reconnect_interval_s)

    async def _attempt_connect(self) -> bool:
        client, sub_client, node, ops = self._client, self._sub_client, self._node, self._ops
        assert client is not None and sub_client is not None
        assert node is not None and ops is not None
        await self._stop_reader()
        if self._closing:
            return False
        pubsub = sub_client.pubsub(ignore_subscribe_messages=True)
        try:
            # Connections pooled before an outage point at a server that is gone.
            await client.connection_pool.disconnect()
            await client.ping()
            # Bounded by hand: this connection has no read timeout (see connect()).
            await _bounded(pubsub.subscribe(self._channel(self._node_id)), self.op_timeout_s)
            # Everything queued while down is covered by the snapshot below; later calls queue.
            while not ops.empty():
                ops.get_nowait()
            self._accepting = True
            await self._write_snapshot(client, node.all_runs_here())
        except _FAILURES as exc:
            self._accepting = False
            with contextlib.suppress(*_FAILURES):
                await _aclose(pubsub)
            self._note_outage(exc)
            return False
        except BaseException:
            # Cancelled by disconnect() half-way: release the subscription's connection.
            self._accepting = False
            with contextlib.suppress(*_FAILURES):
                await _aclose(pubsub)
            raise
        finally:
            self._end_attempt()
        if self._closing:
            self._accepting = False
            with contextlib.suppress(*_FAILURES):
                await _aclose(pubsub)
            return False
        self._pubsub = pubsub
        self._reader_task = asyncio.create_task(
            self._read(pubsub), name=f"adk-cancel redis reader {self._node_id}"
        )
        self._up = True
        self._last_error = None
        if self._outage_logged:
            self._outage_logged = False
            logger.warning(
                "Redis at %s is reachable again: cross-worker cancel and listing work; "
                "re-announced %d local run(s).",
                self.display_url,
                len(self._published),
            )
        return True

    def _end_attempt(self) -> None:
        assert self._attempt_done is not None
        self._last_attempt_end = time.monotonic()
        self._attempt_done.set()
        self._attempt_done = asyncio.Event()

    async def _stop_reader(self) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._close_pubsub()

    def _note_outage(self, exc: BaseException) -> None:
        self._last_error = exc
        if self._outage_logged or self._closing:
            return
        self._outage_logged = True
        logger.warning(
            "Redis at %s is unreachable (%s: %s). Runs still start and same-worker cancels "
            "work; cross-worker cancel and run listing answer 503 until Redis is back. "
            "Reconnecting every %.1f s.",
            self.display_url,
            type(exc).__name__,
            exc,
            self.reconnect_interval_s,
        )

    def _mark_down(self, exc: BaseException) -> None:
        if self._closing:
            return
        self._note_outage(exc)
        if not self._up:
            return
        self._up = False
        self._accepting = False
        self._fail_pending(self._unavailable(exc))
        if self._ops is not None:
            self._ops.put_nowait(_Op("wake"))
        if self._kick is not None:
            self._kick.set()

    def _fail_pending(self, exc: BaseException) -> None:
        for pending in self._pending.values():
            pending.failure = exc
            pending.settle()

    def _unavailable(self, exc: BaseException | None) -> BackendUnavailable:
        cause = f"{type(exc).__name__}: {exc}".rstrip(".") if exc is not None else "not connected"
        error = BackendUnavailable(
            f"Redis at {self.display_url} is unreachable: {cause} (check that Redis is "
            "running and the cancel backend URL is right)"
        )
        error.__cause__ = exc
        return error

    async def _ready(self) -> tuple[Redis, LocalNode]:
        client, node = self._client, self._node
        if client is None or node is None or self._closing:
            raise BackendUnavailable(
                f"The Redis cancel backend ({self.display_url}) is not connected: the app's "
                "startup has not run, or it is shutting down."
            )
        if not self._up and time.monotonic() - self._last_attempt_end > self.op_timeout_s / 5:
            # Redis may be back before the next scheduled retry: try now, within bounds.
            assert self._attempt_done is not None and self._kick is not None
            attempt = self._attempt_done
            self._kick.set()
            await _wait_event(attempt, self.op_timeout_s * 3)
        if not self._up:
            raise self._unavailable(self._last_error)
        return client, node

    def _raise_for(self, exc: BaseException) -> BackendUnavailable:
        if isinstance(exc, _UNREACHABLE):
            self._mark_down(exc)
            return self._unavailable(exc)
        return BackendUnavailable(
            f"Redis at {self.display_url} answered with an error: {type(exc).__name__}: {exc}. "
            "Check that the URL points at a Redis the cancel backend may use (key prefix "
            f"{self.key_prefix!r})."
        )

    # -- writes (announce, withdraw, heartbeat) ---------------------------------------------

    def announce(self, run: RunInfo) -> None:
        self._enqueue(_Op("announce", run))

    def withdraw(self, run: RunInfo) -> None:
        self._enqueue(_Op("withdraw", run))

    def _enqueue(self, op: _Op) -> None:
        # Called on every run's path: never block, never raise.
        if not self._accepting or self._ops is None or self._loop is None:
            return
        try:
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:
                self._ops.put_nowait(op)
            else:
                self._loop.call_soon_threadsafe(self._ops.put_nowait, op)
        except Exception:
            logger.debug("adk-cancel: could not queue a %s for Redis", op.kind, exc_info=True)

    async def _serve(self) -> None:
        client, node, ops = self._client, self._node, self._ops
        assert client is not None and node is not None and ops is not None
        loop = asyncio.get_running_loop()
        interval = self.announce_ttl_s / 3
        next_beat = loop.time() + interval
        while self._up and not self._closing:
            wait_s = next_beat - loop.time()
            if wait_s <= 0:
                try:
                    await self._write_snapshot(client, node.all_runs_here())
                except _FAILURES as exc:
                    self._mark_down(exc)
                    return
                next_beat = loop.time() + interval
                continue
            first = await _get(ops, wait_s)
            if first is None:
                continue
            batch = [first]
            while not ops.empty():
                batch.append(ops.get_nowait())
            try:
                await self._write_ops(client, batch)
            except _FAILURES as exc:
                self._mark_down(exc)
                return

    async def _write_ops(self, client: Redis, batch: Iterable[_Op]) -> None:
        ttl_ms = self._ttl_ms
        commands = 0
        # Applied to _published only once Redis has them: a write lost in an outage stays
        # listed there, so the snapshot after reconnecting removes what it left behind.
        changes: list[tuple[str, tuple[str, str] | None]] = []
        async with client.pipeline(transaction=False) as pipe:
            for op in batch:
                run = op.run
                if op.kind == "announce" and run is not None:
                    hash_key = self._runs_key(run.app_name, run.user_id, run.session_id)
                    run_field = self._run_field(run)
                    pipe.hset(hash_key, run_field, run.model_dump_json())
                    pipe.pexpire(hash_key, ttl_ms)
                    changes.append((run.run_id, (hash_key, run_field)))
                    commands += 2
                elif op.kind == "withdraw" and run is not None:
                    hash_key = self._runs_key(run.app_name, run.user_id, run.session_id)
                    pipe.hdel(hash_key, self._run_field(run))
                    changes.append((run.run_id, None))
                    commands += 1
                elif op.kind == "prune" and op.fields:
                    pipe.hdel(op.hash_key, *op.fields)
                    commands += 1
            if commands:
                await pipe.execute()
        for run_id, location in changes:
            if location is None:
                self._published.pop(run_id, None)
            else:
                self._published[run_id] = location

    async def _write_snapshot(self, client: Redis, runs: list[RunInfo]) -> None:
        """Heartbeat: the node key, and every local run as the registry has it now."""
        ttl_ms = self._ttl_ms
        published: dict[str, tuple[str, str]] = {}
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(
                self._node_key(self._node_id),
                json.dumps({"host": socket.gethostname(), "pid": os.getpid()}),
                px=ttl_ms,
            )
            for run in runs:
                hash_key = self._runs_key(run.app_name, run.user_id, run.session_id)
                run_field = self._run_field(run)
                pipe.hset(hash_key, run_field, run.model_dump_json())
                pipe.pexpire(hash_key, ttl_ms)
                published[run.run_id] = (hash_key, run_field)
            # Entries a lost withdraw left, including a run's old key after it was re-keyed.
            current = set(published.values())
            for hash_key, run_field in self._published.values():
                if (hash_key, run_field) not in current:
                    pipe.hdel(hash_key, run_field)
            await pipe.execute()
        self._published = published

    # -- reads and cancels ------------------------------------------------------------------

    async def list_remote(self, key: SessionKey) -> list[RunInfo]:
        client, _ = await self._ready()
        try:
            holders = await self._holders(client, key)
        except _FAILURES as exc:
            raise self._raise_for(exc) from exc
        return [run for runs in holders.values() for run in runs]

    async def _holders(
        self, client: Redis, key: SessionKey, *, check_alive: bool = True
    ) -> dict[str, list[RunInfo]]:
        """Runs of a session held by other live processes, by node id (without
        ``check_alive``, also those of processes that died within the last TTL)."""
        hash_key = self._runs_key(*key)
        # decode_responses=True: redis-py's bytes-or-str annotation is wider than what comes back.
        entries = cast("dict[str, str]", await client.hgetall(hash_key))
        by_node: dict[str, list[tuple[str, RunInfo]]] = {}
        garbage: list[str] = []
        for run_field, value in entries.items():
            node_part, sep, _ = run_field.partition("/")
            node_id = unquote(node_part)
            if node_id == self._node_id:
                continue
            try:
                if not sep:
                    raise ValueError("no node id in the field")
                run = RunInfo.model_validate_json(value)
            except ValueError:
                garbage.append(run_field)
                continue
            by_node.setdefault(node_id, []).append((run_field, run))
        dead = await self._dead(client, list(by_node)) if check_alive else set()
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
        self._prune(hash_key, garbage)
        return holders

    async def _dead(self, client: Redis, nodes: list[str]) -> set[str]:
        """The nodes whose liveness key has expired."""
        if not nodes:
            return set()
        alive = await client.mget([self._node_key(n) for n in nodes])
        return {n for n, is_alive in zip(nodes, alive, strict=True) if is_alive is None}

    def _prune(self, hash_key: str, fields: list[str]) -> None:
        if fields and self._accepting and self._ops is not None:
            self._ops.put_nowait(_Op("prune", hash_key=hash_key, fields=tuple(fields)))

    async def cancel_remote(self, order: CancelOrder) -> list[CancelledRun]:
        key, invocation_id = order.key, order.invocation_id
        client, _ = await self._ready()
        try:
            # Liveness is checked after publishing, and only for the nodes nobody heard:
            # one round trip less on the common path.
            holders = await self._holders(client, key, check_alive=False)
        except _FAILURES as exc:
            raise self._raise_for(exc) from exc
        if invocation_id is not None:
            # A run that has not learnt its invocation id yet may still be the one: ask.
            holders = {
                n: [r for r in runs if r.invocation_id in (invocation_id, None)]
                for n, runs in holders.items()
            }
            holders = {n: runs for n, runs in holders.items() if runs}
        if not holders:
            return []

        request_id = uuid.uuid4().hex
        pending = _Pending(expected=set(holders))
        self._pending[request_id] = pending
        message = _CancelMessage(
            request_id=request_id, reply_to=self._node_id, order=order
        ).model_dump_json()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for node_id in holders:
                    pipe.publish(self._channel(node_id), message)
                receivers = await pipe.execute()
            deaf = [n for n, count in zip(list(holders), receivers, strict=True) if not count]
            pending.expected.difference_update(deaf)
            pending.settle()
            if deaf:
                # Not subscribed: crashed (listed until its TTL runs out) or reconnecting.
                for node_id in await self._dead(client, deaf):
                    self._prune(
                        self._runs_key(*key),
                        [self._run_field_of(node_id, r) for r in holders.pop(node_id)],
                    )
            deadline = order.timeout_s + self.reply_margin_s if order.wait else self.ack_timeout_s
            await _wait_event(pending.done, deadline)
        except _FAILURES as exc:
            raise self._raise_for(exc) from exc
        finally:
            self._pending.pop(request_id, None)
        if pending.failure is not None:
            raise pending.failure

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
                "adk-cancel: worker %s holds %d run(s) of %s/%s/%s but %s; reporting them as "
                "not stopped.",
                node_id,
                len(runs),
                *key,
                why,
            )
            results.extend(
                CancelledRun(
                    run_id=run.run_id,
                    invocation_id=run.invocation_id,
                    route=run.route,
                    worker=run.worker,
                    stopped=False,
                )
                for run in runs
                if invocation_id is None or run.invocation_id == invocation_id
            )
        return results

    # -- pub/sub ----------------------------------------------------------------------------

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while not self._closing:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    self._dispatch(message.get("data"))
                except Exception:
                    # Anyone with access to Redis can publish here: one bad message must not
                    # end the subscription.
                    logger.exception("adk-cancel: could not handle a message from Redis")
        except _FAILURES as exc:
            self._mark_down(exc)

    def _dispatch(self, data: Any) -> None:
        try:
            message = _MESSAGE.validate_json(data)
        except ValueError:
            logger.debug("adk-cancel: ignoring a malformed message on %s", self._node_id)
            return
        if isinstance(message, _CancelMessage):
            task = asyncio.create_task(self._serve_cancel(message))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
            return
        pending = self._pending.get(message.request_id)
        if pending is None:
            return  # the requester gave up waiting; its timeout already reported this
        if message.error is not None:
            pending.errors[message.node] = message.error
        else:
            pending.replies[message.node] = message.runs
        pending.settle()

    async def _serve_cancel(self, message: _CancelMessage) -> None:
        node, client = self._node, self._client
        if node is None or client is None:
            return
        reply = _ReplyMessage(request_id=message.request_id, node=self._node_id)
        try:
            reply.runs = await node.cancel_here(message.order)
        except Exception as exc:
            logger.exception("adk-cancel: a cancel sent by worker %s failed", message.reply_to)
            reply.error = f"{type(exc).__name__}: {exc}"
        try:
            await client.publish(self._channel(message.reply_to), reply.model_dump_json())
        except _FAILURES as exc:
            self._mark_down(exc)
