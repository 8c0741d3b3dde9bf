"""The Redis backend when Redis is missing, dies, hangs, or comes back.

Every test runs a real ``redis-server`` (stopped with SIGKILL for an outage, started again
on the same port, empty) and real ``SimpleNode`` registries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from adk_cancel import CancelOrder, SessionKey
from adk_cancel.backends import BackendUnavailable, RedisBackend, backend_from_url
from adk_cancel.testing import RedisServer, SimpleNode, free_port

from .backend_helpers import eventually

pytestmark = pytest.mark.timeout(60)

KEY = SessionKey("app", "user", "session")
LOGGER = "adk_cancel.backends.redis"


def make(url: str, **options: float) -> RedisBackend:
    return RedisBackend(url, key_prefix=f"t-{uuid.uuid4().hex[:8]}", **options)


def pair_backends(url: str, **options: float) -> tuple[RedisBackend, RedisBackend]:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    return (
        RedisBackend(url, key_prefix=prefix, **options),
        RedisBackend(url, key_prefix=prefix, **options),
    )


@contextlib.asynccontextmanager
async def connected_pair(
    url: str, **options: float
) -> AsyncIterator[tuple[RedisBackend, SimpleNode, RedisBackend]]:
    """Two connected backends of one cluster, A with a node holding runs; B to look."""
    a, b = pair_backends(url, **options)
    node_a = SimpleNode(a)
    await a.connect(node_a)
    await b.connect(SimpleNode(b))
    try:
        yield a, node_a, b
    finally:
        await node_a.close()
        await a.disconnect()
        await b.disconnect()


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "unreachable" in r.getMessage()
    ]


async def timed(coro: object) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        await coro  # type: ignore[misc]
    except BaseException as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


async def our_tasks() -> list[asyncio.Task[object]]:
    await asyncio.sleep(0)
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("adk-cancel redis") and not t.done()
    ]


# -- options ----------------------------------------------------------------------------------


def test_options_come_from_keywords_or_the_url() -> None:
    backend = backend_from_url(
        "redis://127.0.0.1:6390/2?announce_ttl_s=4.5&key_prefix=tenant-a&health_check_interval=3"
    )
    assert isinstance(backend, RedisBackend)
    assert backend.announce_ttl_s == 4.5 and backend.key_prefix == "tenant-a"
    # Our options are removed; redis-py's own stay for redis-py.
    assert backend.url == "redis://127.0.0.1:6390/2?health_check_interval=3"
    assert RedisBackend("redis://h/0?announce_ttl_s=9", announce_ttl_s=2).announce_ttl_s == 2
    assert RedisBackend("unix:///tmp/redis.sock?db=1").url == "unix:///tmp/redis.sock?db=1"
    for bad in ("announce_ttl_s=0", "op_timeout_s=-1", "ack_timeout_s=soon", "key_prefix="):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            RedisBackend(f"redis://h/0?{bad}")


async def test_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    backend = make(f"redis://user:s3cret@127.0.0.1:{port}/0")
    assert backend.display_url == f"redis://user:***@127.0.0.1:{port}/0"
    node = SimpleNode(backend)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await backend.connect(node)
        with pytest.raises(BackendUnavailable) as info:
            await backend.list_remote(KEY)
        await backend.disconnect()
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in caplog.text
    assert "user:***@" in str(info.value)


# -- outages ----------------------------------------------------------------------------------


async def test_redis_down_at_startup_then_it_comes_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.stop()
    a, b = pair_backends(redis_server.url, announce_ttl_s=3)
    node_a, node_b = SimpleNode(a), SimpleNode(b)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        elapsed, error = await timed(a.connect(node_a))
        assert error is None and elapsed < 1.0  # startup is not held up, and does not fail
        await b.connect(node_b)
        run = node_a.start_run(KEY)  # announce while down: no error
        assert not a.connected

        for _ in range(3):
            elapsed, error = await timed(a.list_remote(KEY))
            assert isinstance(error, BackendUnavailable) and elapsed < 1.0
            assert str(error).startswith(f"Redis at {redis_server.url} is unreachable: ")
            assert error.__cause__ is not None
            elapsed, error = await timed(
                b.cancel_remote(CancelOrder(KEY, "r", wait=True, timeout_s=1))
            )
            assert isinstance(error, BackendUnavailable) and elapsed < 1.0
        # Local cancels do not go through the backend at all.
        assert [r.stopped for r in await node_a.cancel_here(
            CancelOrder(KEY._replace(session_id="x"), "r", timeout_s=1)
        )] == []  # fmt: skip
        assert len(outage_warnings(caplog)) == 2  # one per backend, not one per call

        redis_server.start()
        # No manual step: the run announced while Redis was down shows up, and cancels work.
        listed = await eventually(lambda: b.list_remote(KEY), timeout=5)
        assert [r.run_id for r in listed] == [run.run_id]
        [outcome] = await b.cancel_remote(CancelOrder(KEY, "back", wait=True, timeout_s=2))
        assert (outcome.run_id, outcome.stopped_by) == (run.run_id, "abort")
        assert a.connected and b.connected
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    await node_a.close()
    await a.disconnect()
    await b.disconnect()


async def test_redis_dies_mid_run_and_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair_backends(redis_server.url, announce_ttl_s=3)
    node_a, node_b = SimpleNode(a), SimpleNode(b)
    await a.connect(node_a)
    await b.connect(node_b)
    first = node_a.start_run(KEY)
    await eventually(lambda: b.list_remote(KEY))

    for outage in (1, 2):
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            caplog.clear()
            redis_server.stop()
            # The pub/sub connection sees the EOF at once; list/cancel fail fast meanwhile.
            for _ in range(5):
                elapsed, error = await timed(b.list_remote(KEY))
                assert isinstance(error, BackendUnavailable), error
                assert elapsed < 1.0
                elapsed, error = await timed(
                    b.cancel_remote(CancelOrder(KEY, "r", wait=False, timeout_s=1))
                )
                assert isinstance(error, BackendUnavailable) and elapsed < 1.0
            # Runs keep starting and ending: announce/withdraw never raise.
            late = node_a.start_run(KEY, invocation_id=f"late-{outage}")
            short = node_b.start_run(KEY._replace(session_id="short"))
            await node_b.cancel_here(
                CancelOrder(KEY._replace(session_id="short"), "local", timeout_s=1)
            )
            assert not node_b.is_running(short.run_id)
            await eventually(lambda: _async(not a.connected and not b.connected))
            assert len(outage_warnings(caplog)) == 2, [r.getMessage() for r in caplog.records]

            redis_server.start()  # empty: everything must be re-announced

            async def both_listed(late_id: str = late.run_id) -> bool:
                ids = {r.run_id for r in await b.list_remote(KEY)}
                return ids == {first.run_id, late_id}

            await eventually(both_listed, timeout=5)
            assert len(outage_warnings(caplog)) == 2  # no new warning while recovering
        [outcome] = await b.cancel_remote(
            CancelOrder(KEY, "back", invocation_id=late.invocation_id, timeout_s=2)
        )
        assert (outcome.run_id, outcome.stopped_by) == (late.run_id, "abort")
    assert node_a.is_running(first.run_id)
    await node_a.close()
    await node_b.close()
    await a.disconnect()
    await b.disconnect()
    assert await our_tasks() == []


async def test_a_hanging_redis_answers_within_the_op_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Accepts connections (the kernel's backlog) but never answers a byte.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        backend = make(f"redis://127.0.0.1:{port}/0", op_timeout_s=0.2)
        node = SimpleNode(backend)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            elapsed, error = await timed(backend.connect(node))
            assert error is None and elapsed < 1.5
            node.start_run(KEY)
            elapsed, error = await timed(backend.list_remote(KEY))
            assert isinstance(error, BackendUnavailable) and elapsed < 1.5
            elapsed, error = await timed(backend.disconnect())
            assert error is None and elapsed < 1.5
        assert len(outage_warnings(caplog)) == 1
        await node.close()


async def test_a_redis_that_stops_answering_mid_run_is_noticed_by_the_writer(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The writer's connection has no socket timeout (it would cost every streamed event a
    # task): its round trips are bounded by the writer, so a Redis that hangs with its
    # sockets open is noticed by the next write, with nobody reading.
    process = redis_server.process
    assert process is not None
    async with connected_pair(redis_server.url, op_timeout_s=0.3) as (a, node_a, b):
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            process.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                run = node_a.start_run(KEY)  # its announcement is the write that hangs
                await eventually(lambda: _async(bool(outage_warnings(caplog))), timeout=3)
                assert time.monotonic() - started < 2.0
            finally:
                process.send_signal(signal.SIGCONT)
            await eventually(lambda: _async(a.connected), timeout=5)
            listed = await eventually(lambda: b.list_remote(KEY))
            assert [r.run_id for r in listed] == [run.run_id]
    assert await our_tasks() == []


async def test_a_busy_event_loop_is_no_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A run that keeps the loop busy past the op timeout (a model streaming from memory
    # never yields) delays the writer's answer: that is the loop's time, not Redis's.
    async with connected_pair(redis_server.url, op_timeout_s=0.3) as (a, node_a, b):
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for i in range(3):
                run = node_a.start_run(KEY._replace(session_id=f"busy{i}"))
                for _ in range(3):
                    await asyncio.sleep(0)  # the writer sends, then waits for the answer
                time.sleep(1.0)  # the point: a loop that does not yield
                [listed] = await eventually(
                    lambda i=i: b.list_remote(KEY._replace(session_id=f"busy{i}"))
                )
                assert listed.run_id == run.run_id
            assert outage_warnings(caplog) == [] and a.connected


async def test_disconnect_forgets_this_node_and_ends_every_task(
    redis_server: RedisServer,
) -> None:
    a, b = pair_backends(redis_server.url, announce_ttl_s=30)
    node_a, node_b = SimpleNode(a), SimpleNode(b)
    await a.connect(node_a)
    await b.connect(node_b)
    node_a.start_run(KEY)
    node_b.start_run(KEY)
    await eventually(lambda: b.list_remote(KEY))
    assert len(await our_tasks()) == 4  # a writer and a reader per backend

    # A cancel being served when the holder shuts down is ended too.
    node_a.start_run(KEY._replace(session_id="stubborn"), stubborn=True)
    await eventually(lambda: b.list_remote(KEY._replace(session_id="stubborn")))
    pending = asyncio.create_task(
        b.cancel_remote(CancelOrder(KEY._replace(session_id="stubborn"), "r", timeout_s=30))
    )
    await asyncio.sleep(0.1)
    await a.disconnect()
    # The TTL is 30 s, yet the graceful shutdown removed A at once.
    assert await b.list_remote(KEY) == []
    # B's request gets no answer from A any more; it ends within its own bound.
    b.reply_margin_s = 0.2
    await node_a.close()
    await b.disconnect()
    with pytest.raises(BackendUnavailable, match="shutting down"):
        await pending
    assert await our_tasks() == []
    await node_b.close()


HOLDER = """
import asyncio, sys
from adk_cancel import SessionKey
from adk_cancel.backends import RedisBackend
from adk_cancel.testing import SimpleNode

async def main():
    node = SimpleNode(RedisBackend(sys.argv[1], key_prefix=sys.argv[2], announce_ttl_s=1.0))
    await node.backend.connect(node)
    run = node.start_run(SessionKey("app", "user", "session"))
    print(node.node_id, run.run_id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_holder_is_reported_not_stopped_until_it_expires(
    redis_server: RedisServer,
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, redis_server.url, prefix, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        holder_id, run_id = line.decode().split()
        b = RedisBackend(redis_server.url, key_prefix=prefix, ack_timeout_s=0.5)
        await b.connect(SimpleNode(b))
        [listed] = await eventually(lambda: b.list_remote(KEY))
        assert (listed.run_id, listed.worker) == (run_id, holder_id)
    finally:
        holder.kill()  # SIGKILL: no goodbye, its entries stay until the TTL runs out
        await holder.wait()

    # Until then it is listed, and a cancel reports its run as not stopped (nobody listens).
    [outcome] = await b.cancel_remote(CancelOrder(KEY, "r", wait=False, timeout_s=1))
    assert (outcome.run_id, outcome.stopped, outcome.worker) == (run_id, False, holder_id)

    async def expired() -> bool:
        return await b.list_remote(KEY) == []

    started = time.monotonic()
    await eventually(expired, timeout=3)
    assert time.monotonic() - started < 1.5  # the TTL is 1 s
    assert await b.cancel_remote(CancelOrder(KEY, "r", wait=True, timeout_s=1)) == []
    await b.disconnect()


async def _async(value: object) -> object:
    return value


async def test_garbage_in_redis_is_survived(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from redis.asyncio import Redis

    a, b = pair_backends(redis_server.url)
    node_a, node_b = SimpleNode(a), SimpleNode(b)
    await a.connect(node_a)
    await b.connect(node_b)
    raw = Redis.from_url(redis_server.url)
    try:
        run = node_a.start_run(KEY)
        await eventually(lambda: b.list_remote(KEY))
        # Anyone with access to Redis can publish: junk on A's channel is ignored.
        for junk in (b"not json", b"[1, 2]", b'{"type": "cancel"}', b'{"type": "reply"}'):
            await raw.publish(a.keys.channel(node_a.node_id), junk)
        # A stray field in the session's hash is skipped, not fatal.
        await raw.hset(b.keys.runs(KEY), "no-separator", "{}")
        [outcome] = await b.cancel_remote(CancelOrder(KEY, "r", wait=True, timeout_s=2))
        assert (outcome.run_id, outcome.stopped_by) == (run.run_id, "abort")

        # A key of the wrong type: Redis answers with an error; that is a 503 too, but not
        # an outage (the backend stays connected and logs no outage).
        other = KEY._replace(session_id="wrong-type")
        await raw.set(b.keys.runs(other), "a string")
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            with pytest.raises(BackendUnavailable, match="answered with an error"):
                await b.list_remote(other)
        assert b.connected and outage_warnings(caplog) == []
    finally:
        await raw.aclose()
        await node_a.close()
        await a.disconnect()
        await b.disconnect()


async def test_an_idle_subscription_outlives_the_op_timeout(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A blocking read bounded by socket_timeout (redis-py issue #4098) would drop the
    # subscription every op_timeout_s and log an outage.
    a, b = pair_backends(redis_server.url, op_timeout_s=0.1, announce_ttl_s=60)
    node_a, node_b = SimpleNode(a), SimpleNode(b)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await a.connect(node_a)
        await b.connect(node_b)
        run = node_a.start_run(KEY)
        await eventually(lambda: b.list_remote(KEY))
        await asyncio.sleep(1.0)
        [outcome] = await b.cancel_remote(CancelOrder(KEY, "r", wait=True, timeout_s=2))
        assert (outcome.run_id, outcome.stopped_by) == (run.run_id, "abort")
    assert outage_warnings(caplog) == []
    await a.disconnect()
    await b.disconnect()


# -- one bad item disturbs nothing else -------------------------------------------------------


async def test_an_id_that_is_not_unicode_text_disturbs_no_other_run(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue #9 item 7: a lone surrogate in a session id used to fail the writer's whole batch
    # (and every heartbeat), so other runs showed up seconds late or not at all.
    a, b = pair_backends(redis_server.url, announce_ttl_s=0.6)
    node_a, node_b = SimpleNode(a), SimpleNode(b)
    odd = KEY._replace(session_id="\ud800x")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await a.connect(node_a)
        await b.connect(node_b)
        node_a.start_run(odd)
        started = time.monotonic()
        plain = node_a.start_run(KEY)
        [listed] = await eventually(lambda: b.list_remote(KEY), timeout=2)
        assert listed.run_id == plain.run_id
        assert time.monotonic() - started < 0.5
        # The odd id is just another id: listed and cancelled like any other.
        [odd_listed] = await eventually(lambda: b.list_remote(odd), timeout=2)
        assert odd_listed.session_id == "\ud800x"
        [outcome] = await b.cancel_remote(CancelOrder(odd, "r", wait=True, timeout_s=2))
        assert (outcome.run_id, outcome.stopped_by) == (odd_listed.run_id, "abort")
        # Heartbeats (every 0.2 s here) keep A alive past its TTL with both runs announced.
        node_a.start_run(odd)
        await asyncio.sleep(1.0)
        assert [r.run_id for r in await b.list_remote(KEY)] == [plain.run_id]
        assert len(await b.list_remote(odd)) == 1
        assert a.connected and b.connected
    assert outage_warnings(caplog) == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    await node_a.close()
    await a.disconnect()
    await b.disconnect()


async def test_bytes_that_are_not_utf8_on_a_channel_leave_it_listening(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from redis.asyncio import Redis

    a, b = pair_backends(redis_server.url, ack_timeout_s=1.0)
    node_a, node_b = SimpleNode(a), SimpleNode(b)
    await a.connect(node_a)
    await b.connect(node_b)
    raw = Redis.from_url(redis_server.url)
    try:
        run = node_a.start_run(KEY)
        await eventually(lambda: b.list_remote(KEY))
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            channel = a.keys.channel(node_a.node_id)
            assert await raw.publish(channel, b"\xff\xfe not utf-8") == 1
            [outcome] = await b.cancel_remote(CancelOrder(KEY, "r", wait=True, timeout_s=2))
        assert (outcome.run_id, outcome.stopped_by) == (run.run_id, "abort")
        assert a.connected and outage_warnings(caplog) == []
    finally:
        await raw.aclose()
        await a.disconnect()
        await b.disconnect()


async def test_a_write_redis_refuses_is_dropped_alone_and_logged_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from redis.asyncio import Redis

    a, b = pair_backends(redis_server.url, announce_ttl_s=0.6)
    node_a, node_b = SimpleNode(a), SimpleNode(b)
    blocked = KEY._replace(session_id="blocked")
    raw = Redis.from_url(redis_server.url)
    try:
        await a.connect(node_a)
        await b.connect(node_b)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            # Someone else's string where the session's hash goes: HSET answers WRONGTYPE.
            await raw.set(a.keys.runs(blocked), "not a hash")
            refused = node_a.start_run(blocked)
            plain = node_a.start_run(KEY)  # queued with it: one batch
            started = time.monotonic()
            [listed] = await eventually(lambda: b.list_remote(KEY), timeout=2)
            assert listed.run_id == plain.run_id
            assert time.monotonic() - started < 0.5
            # Heartbeats (every 0.2 s) retry it for a second: still one warning.
            for _ in range(10):
                await raw.set(a.keys.runs(blocked), "not a hash")
                await asyncio.sleep(0.1)
            assert a.connected and outage_warnings(caplog) == []
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1, warnings
            assert refused.run_id in warnings[0] and "WRONGTYPE" in warnings[0]
            # Once the key is free, the next heartbeat writes the run.
            await raw.delete(a.keys.runs(blocked))
            [late] = await eventually(lambda: b.list_remote(blocked), timeout=2)
            assert late.run_id == refused.run_id
    finally:
        await raw.aclose()
        await node_a.close()
        await a.disconnect()
        await b.disconnect()


async def test_a_heartbeat_rewrites_no_run_yet_brings_back_what_redis_lost(
    redis_server: RedisServer,
) -> None:
    from redis.asyncio import Redis

    raw = Redis.from_url(redis_server.url, decode_responses=True)

    async def hsets() -> int:
        stats = await raw.info("commandstats")
        return int(stats.get("cmdstat_hset", {}).get("calls", 0))

    # A heartbeat every 0.2 s.
    async with connected_pair(redis_server.url, announce_ttl_s=0.6) as (a, node_a, b):
        try:
            sessions = [KEY._replace(session_id=f"s{i}") for i in range(20)]
            runs = {node_a.start_run(key).run_id for key in sessions}
            for key in sessions:
                await eventually(lambda key=key: b.list_remote(key))
            written = await hsets()
            await asyncio.sleep(1.3)  # six heartbeats, each past the 0.6 s the hashes live
            assert await hsets() == written  # expiries refreshed, nothing rewritten
            [listed] = await b.list_remote(sessions[7])
            assert listed.run_id in runs
            # Redis loses every key with the connections open (FLUSHALL, an eviction): no
            # outage, no reconnect; the next heartbeat finds the hashes gone, rewrites all.
            await raw.flushall()
            for key in sessions:
                await eventually(lambda key=key: b.list_remote(key))
            assert a.connected
        finally:
            await raw.aclose()


# -- cancellation -----------------------------------------------------------------------------


async def test_waits_keep_a_cancellation_that_comes_with_their_wakeup() -> None:
    # The backend waits on events and queues inside anyio cancel scopes. On Python 3.11,
    # asyncio.wait_for has a flaw: when what it waits for completes in the same loop turn as
    # the waiter is cancelled, it returns and the cancellation is lost, and a task that
    # swallows its cancellation never stops. This construction shows the flaw, and that the
    # scopes do not have it.
    async def cancelled_with_wakeup(wait: Any) -> bool:
        event = asyncio.Event()
        task = asyncio.create_task(wait(event))
        await asyncio.sleep(0)  # now waiting
        event.set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    async def move_on(event: asyncio.Event) -> None:
        with anyio.move_on_after(10):
            await event.wait()

    async def fail(event: asyncio.Event) -> None:
        with anyio.fail_after(10):
            await event.wait()

    assert await cancelled_with_wakeup(move_on)
    assert await cancelled_with_wakeup(fail)
    if sys.version_info < (3, 12):
        assert not await cancelled_with_wakeup(lambda e: asyncio.wait_for(e.wait(), 10))

    # The writer's queue: an item put in the turn its reader is cancelled stays queued.
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def get() -> None:
        with anyio.move_on_after(10):
            await queue.get()

    task = asyncio.create_task(get())
    await asyncio.sleep(0)
    queue.put_nowait("announce")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.get_nowait() == "announce"


async def test_a_cancel_remote_can_be_cancelled_while_it_waits(redis_server: RedisServer) -> None:
    a, b = pair_backends(redis_server.url)
    node_a, node_b = SimpleNode(a), SimpleNode(b)
    await a.connect(node_a)
    await b.connect(node_b)
    try:
        stubborn = node_a.start_run(KEY, stubborn=True)
        await eventually(lambda: b.list_remote(KEY))
        waiting = asyncio.create_task(b.cancel_remote(CancelOrder(KEY, "r", timeout_s=30)))
        await eventually(lambda: _async(node_a.cancel_calls))  # A got it; B waits for A
        elapsed, error = await timed(_cancel(waiting))
        assert isinstance(error, asyncio.CancelledError) and elapsed < 0.5
        # B is unharmed: the next cancel gets its answer.
        other = node_a.start_run(KEY._replace(session_id="other"))
        await eventually(lambda: b.list_remote(KEY._replace(session_id="other")))
        [outcome] = await b.cancel_remote(
            CancelOrder(KEY._replace(session_id="other"), "r", timeout_s=2)
        )
        assert (outcome.run_id, outcome.stopped_by) == (other.run_id, "abort")
        assert node_a.is_running(stubborn.run_id)
    finally:
        await node_a.close()
        await a.disconnect()
        await b.disconnect()


async def _cancel(task: asyncio.Task[Any]) -> Any:
    task.cancel()
    return await task
