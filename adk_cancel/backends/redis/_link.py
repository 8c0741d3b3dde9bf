"""The backend's link to Redis: one state, the tasks that keep it, and what an outage does.

::

    IDLE --start()--> DOWN --subscribed--> SYNCING --snapshot written--> UP
                       ^                      |                           |
                       +------ attempt fails -+------- mark_down() -------+
    any state --stop()--> CLOSING --> IDLE

- DOWN: Redis is not known to be reachable. Cross-process calls raise ``BackendUnavailable``
  (after trying once more, see ``ready``); writes are not queued, as the snapshot written on
  reconnecting covers every run. Attempts follow redis-py's ``ExponentialBackoff`` from
  ``FIRST_RETRY_S`` up to ``reconnect_interval_s``.
- SYNCING: subscribed, writing the snapshot; writes are queued from here on.
- UP: the reader (a task of its own) receives this process's channel; the writer (in the
  owner task) writes the queue and the heartbeat. ``mark_down`` cancels both.

One owner task, started by ``start`` and ended by ``stop``, runs the reconnect loop and holds
the task group of the reader and of the cancels being served. Waits are anyio cancel scopes,
which keep a cancellation that arrives in the same loop turn as the wakeup (Python 3.11's
``asyncio.wait_for`` returns the result and loses it).

No automatic resubscribe, deliberately: the subscription's connection has no retry, since its
EOF is how an outage or a Redis restart (which loses every key) is noticed, and a silent
resubscribe would hide that. Reconnecting always writes a full snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._base import BackendUnavailable, LocalNode
from ._keys import KeyLayout, encode
from ._writer import Op, Writer

logger = logging.getLogger(__package__)

FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)
"""A round trip failed: Redis unreachable, not answering, or answering with an error."""
_UNREACHABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors that mean "Redis cannot be reached", as opposed to Redis answering with an error."""
FIRST_RETRY_S = 0.05
"""First reconnect delay; it doubles up to reconnect_interval_s. Short, since a restarted
Redis is usually back within a second."""
_STOP_S = 10.0
"""How long ``stop`` waits for the tasks to end before it gives up on them (logged)."""


class State(enum.Enum):
    IDLE = "idle"
    DOWN = "down"
    SYNCING = "syncing"
    UP = "up"
    CLOSING = "closing"


_QUEUEING = (State.SYNCING, State.UP)


class Link:
    """One process's connection to Redis, from ``start`` to ``stop`` (one use)."""

    def __init__(
        self,
        *,
        url: str,
        display_url: str,
        keys: KeyLayout,
        node: LocalNode,
        announce_ttl_s: float,
        op_timeout_s: float,
        reconnect_interval_s: float,
        on_message: Callable[[bytes], None],
        on_down: Callable[[BackendUnavailable], None],
    ) -> None:
        self.url = url
        self.display_url = display_url
        self.keys = keys
        self.node = node
        self.state = State.IDLE
        self.writer = Writer(keys, node.node_id, max(1, int(announce_ttl_s * 1000)), op_timeout_s)
        self._heartbeat_s = announce_ttl_s / 3
        self._op_timeout_s = op_timeout_s
        self._reconnect_interval_s = reconnect_interval_s
        self._on_message = on_message
        self._on_down = on_down
        self._error: BaseException | None = None
        """Why Redis is unreachable (logged once per outage); None while it is reachable."""
        self._client: Redis | None = None
        self._sub_client: Redis | None = None
        self._write_client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: asyncio.Task[None] | None = None
        self._life = anyio.CancelScope()
        self._up_scope = anyio.CancelScope()
        self._tasks: TaskGroup | None = None
        self._kick = asyncio.Event()
        self._attempt_done = asyncio.Event()
        self._last_attempt_end = 0.0

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise not_connected(self.display_url)
        return self._client

    @property
    def sender(self) -> Redis:
        """The client of the cancel path's sends (the order, its outcome): no socket timeout,
        which would send each command from a task of its own, behind the loop's other work
        (see ``Writer.serve``); each caller bounds its send."""
        if self._write_client is None:
            raise not_connected(self.display_url)
        return self._write_client

    # -- start and stop ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        common: dict[str, Any] = {
            "socket_timeout": self._op_timeout_s,
            "socket_connect_timeout": self._op_timeout_s,
            "client_name": f"adk-cancel:{encode(self.node.node_id)}"[:120],
        }
        # Commands: one immediate retry on a fresh connection when a pooled one turns out to
        # be closed (an idle timeout, a proxy); no retry on timeouts, no backoff, so a down or
        # hanging Redis still answers 503 within op_timeout_s.
        self._client = Redis.from_url(
            self.url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
            **common,
        )
        # The subscription: no retry at all (see the module's docstring). No read timeout:
        # redis-py before 8.x applies socket_timeout to a blocking get_message (its issue
        # #4098), which would end an idle subscription every op_timeout_s; a Redis that hangs
        # without closing the socket is noticed by the heartbeat's writes instead. Bytes, not
        # text: a message that is not UTF-8 is ignored, where decoding it would end the read.
        self._sub_client = Redis.from_url(
            self.url, retry=Retry(NoBackoff(), 0), **{**common, "socket_timeout": None}
        )
        # The writer's: no socket timeout either, its round trips are bounded by the writer
        # (see Writer.serve: the hot path of every streamed event of a rejoinable run).
        self._write_client = Redis.from_url(
            self.url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            **{**common, "socket_timeout": None},
        )
        self.state = State.DOWN
        try:
            # Startup must not fail because Redis is down: the attempt logs, the owner retries.
            pubsub = await self._attempt()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_clients()
            raise
        if self.state in (State.IDLE, State.CLOSING):  # stop() ran meanwhile
            return
        self._owner = asyncio.create_task(
            self._own(pubsub), name=f"adk-cancel redis backend {self.node.node_id}"
        )

    async def stop(self) -> None:
        """End every task and close the connections, within bounds, even if cancelled."""
        was_up = self.state is State.UP
        self.state = State.CLOSING
        self._life.cancel()
        with anyio.CancelScope(shield=True):
            owner, self._owner = self._owner, None
            if owner is not None:
                await asyncio.wait({owner}, timeout=_STOP_S)
                if not owner.done():
                    logger.warning("adk-cancel: the Redis backend's task did not stop: %s", owner)
            if was_up and self._client is not None:
                # What is still queued (the records of runs a shutdown just ended) is written;
                # then other processes stop listing this one at once rather than after the TTL.
                with anyio.move_on_after(self._op_timeout_s * 2):
                    with contextlib.suppress(*FAILURES):
                        await self.writer.flush(self._client)
                        await self.writer.forget(self._client)
            await self._close_clients()
        self.state = State.IDLE

    async def _close_clients(self) -> None:
        for client in (self._client, self._sub_client, self._write_client):
            if client is not None:
                with contextlib.suppress(*FAILURES):
                    await client.aclose()
        self._client = self._sub_client = self._write_client = None

    # -- the owner task ---------------------------------------------------------------------

    async def _own(self, pubsub: PubSub | None) -> None:
        backoff = ExponentialBackoff(cap=self._reconnect_interval_s, base=FIRST_RETRY_S)
        failures = 0
        try:
            with self._life:
                async with anyio.create_task_group() as tasks:
                    self._tasks = tasks
                    while True:
                        try:
                            if pubsub is not None:
                                await self._while_up(pubsub)
                                failures = 0
                            else:
                                with anyio.move_on_after(backoff.compute(failures)):
                                    await self._kick.wait()
                                self._kick.clear()
                                failures += 1
                            pubsub = await self._attempt()
                        except Exception as exc:
                            # A bug here (or in the registry's all_runs_here) must not stop
                            # the reconnects for good: log it and go on after a pause.
                            logger.exception("adk-cancel: the Redis backend's loop failed")
                            if self.state is State.UP:
                                self.mark_down(exc)
                            pubsub = None
                            await anyio.sleep(self._reconnect_interval_s)
        finally:
            self._tasks = None

    async def _attempt(self) -> PubSub | None:
        """Connect, subscribe and write the snapshot: UP and the subscription, or None."""
        client, sub_client = self._client, self._sub_client
        assert client is not None and sub_client is not None
        pubsub = sub_client.pubsub(ignore_subscribe_messages=True)
        up = False
        try:
            # Connections pooled before an outage point at a server that is gone.
            await client.connection_pool.disconnect()
            await client.ping()
            if self._write_client is not None:
                # Connected now, not by the first write: that may come while a run keeps
                # the loop busy past the connect timeout.
                await self._write_client.connection_pool.disconnect()
                with anyio.fail_after(self._op_timeout_s):
                    await self._write_client.ping()
            try:
                # Bounded here: this connection has no read timeout (see start()).
                with anyio.fail_after(self._op_timeout_s):
                    await pubsub.subscribe(self.keys.channel(self.node.node_id))
            except TimeoutError as exc:
                raise RedisTimeoutError(f"no answer within {self._op_timeout_s:g} s") from exc
            # Everything queued while down is covered by the snapshot below; later calls queue.
            self.writer.discard_queued()
            self._enter(State.SYNCING)
            await self.writer.write_snapshot(
                client, self.node.all_runs_here(), self.node.streams_here()
            )
            self._up_scope = anyio.CancelScope()
            up = self._enter(State.UP)
        except FAILURES as exc:
            self._note_outage(exc)
        finally:
            if not up:
                self._enter(State.DOWN)
                await _close(pubsub)
            self._last_attempt_end = time.monotonic()
            self._attempt_done.set()
            self._attempt_done = asyncio.Event()
        if not up:
            return None
        if self._error is not None:
            self._error = None
            logger.warning(
                "Redis at %s is reachable again: cross-worker cancel and listing work; "
                "re-announced %d local run(s).",
                self.display_url,
                len(self.writer.published),
            )
        return pubsub

    async def _while_up(self, pubsub: PubSub) -> None:
        """Read and write until ``mark_down`` or ``stop`` cancels the up scope."""
        try:
            with self._up_scope:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(
                        self._read, pubsub, name=f"adk-cancel redis reader {self.node.node_id}"
                    )
                    await self._write()
                    tasks.cancel_scope.cancel()
        finally:
            await _close(pubsub)

    async def _write(self) -> None:
        while True:
            try:
                client = self._write_client
                if client is None:
                    raise not_connected(self.display_url)
                await self.writer.serve(client, self.node, self._heartbeat_s)
            except FAILURES as exc:
                self.mark_down(exc)
                return
            except Exception:
                logger.exception("adk-cancel: the Redis backend's writer failed; retrying")
                await anyio.sleep(self._reconnect_interval_s)

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    self._on_message(message.get("data"))
                except Exception:
                    # Anyone with access to Redis can publish here: one bad message must not
                    # end the subscription.
                    logger.exception("adk-cancel: could not handle a message from Redis")
        except FAILURES as exc:
            self.mark_down(exc)
        except Exception as exc:
            logger.exception("adk-cancel: the Redis subscription failed; reconnecting")
            self.mark_down(exc)

    def spawn(self, work: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``work`` in a task the owner ends; dropped when the link is not running."""
        if self._tasks is not None:
            self._tasks.start_soon(_logged, work, name=name)

    # -- the hot path -----------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        """Queue a write, from any thread. Called on every run's path: never blocks or raises."""
        if self.state not in _QUEUEING or self._loop is None:
            return
        try:
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:
                self.writer.queue.put_nowait(op)
            else:
                self._loop.call_soon_threadsafe(self.writer.queue.put_nowait, op)
        except Exception:
            logger.debug("adk-cancel: could not queue a %s for Redis", op.kind, exc_info=True)

    # -- outages ----------------------------------------------------------------------------

    async def ready(self) -> Redis:
        """The client, once Redis is known reachable; raises ``BackendUnavailable``."""
        if self.state in (State.IDLE, State.CLOSING):
            raise not_connected(self.display_url)
        if (
            self.state is not State.UP
            and time.monotonic() - self._last_attempt_end > self._op_timeout_s / 5
        ):
            # Redis may be back before the next scheduled retry: try now, within bounds.
            attempt = self._attempt_done
            self._kick.set()
            with anyio.move_on_after(self._op_timeout_s * 3):
                await attempt.wait()
        if self.state is not State.UP:
            raise self.unavailable(self._error)
        return self.client

    def mark_down(self, exc: BaseException) -> None:
        """A round trip failed: note the outage and, if up, reconnect."""
        if self.state in (State.IDLE, State.CLOSING):
            return
        self._note_outage(exc)
        if self.state is not State.UP:
            return
        self.state = State.DOWN
        self._on_down(self.unavailable(exc))
        self._up_scope.cancel()
        self._kick.set()

    def error_for(self, exc: BaseException) -> BackendUnavailable:
        """What a cross-process call raises for a failed round trip."""
        if isinstance(exc, _UNREACHABLE):
            self.mark_down(exc)
            return self.unavailable(exc)
        return BackendUnavailable(
            f"Redis at {self.display_url} answered with an error: {type(exc).__name__}: {exc}. "
            "Check that the URL points at a Redis the cancel backend may use (key prefix "
            f"{self.keys.prefix!r})."
        )

    def unavailable(self, exc: BaseException | None) -> BackendUnavailable:
        cause = f"{type(exc).__name__}: {exc}".rstrip(".") if exc is not None else "not connected"
        error = BackendUnavailable(
            f"Redis at {self.display_url} is unreachable: {cause} (check that Redis is "
            "running and the cancel backend URL is right)"
        )
        error.__cause__ = exc
        return error

    def _enter(self, state: State) -> bool:
        """Move to ``state`` unless ``stop`` has begun; whether it moved."""
        if self.state in (State.IDLE, State.CLOSING):
            return False
        self.state = state
        return True

    def _note_outage(self, exc: BaseException) -> None:
        first, self._error = self._error is None, exc
        if not first or self.state is State.CLOSING:
            return
        logger.warning(
            "Redis at %s is unreachable (%s: %s). Runs still start and same-worker cancels "
            "work; cross-worker cancel and run listing reach this worker only until Redis is "
            "back. Reconnecting, at least every %.1f s.",
            self.display_url,
            type(exc).__name__,
            exc,
            self._reconnect_interval_s,
        )


def not_connected(display_url: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"The Redis cancel backend ({display_url}) is not connected: the app's startup has "
        "not run, or it is shutting down."
    )


async def _close(pubsub: PubSub) -> None:
    # Shielded: this runs on the way out of a cancelled scope, and the connection must go.
    with anyio.move_on_after(2.0, shield=True), contextlib.suppress(*FAILURES):
        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # redis-py < 8.2 leaves it unannotated


async def _logged(work: Callable[[], Awaitable[None]]) -> None:
    # A task of the owner's group: an exception would end the reader and the reconnects.
    try:
        await work()
    except Exception:
        logger.exception("adk-cancel: a task of the Redis backend failed")
