"""Rejoinable runs' event logs in Redis Streams, so a client can follow a run through any
worker.

The worker holding a run writes its events as they are sent, those of one round trip in
one command: a script (``RESYNC``) that adds each entry past the stream's newest, with the
event's own id (``0-N``) and ``MAXLEN`` = the number of events the worker's own log keeps (so
Redis holds the same window, bounded in events and bytes alike), then the end marker
(``0-{last+1}``, field ``end``), and sets the expiry: the announce TTL while the run goes on,
refreshed by the heartbeat (the log of a worker that crashed vanishes as its run listing
does), ``stream_keep_s`` once it ended. A follower on another worker reads with ``XREAD
BLOCK`` from its last id.

The worker's own log stays the reference: when Redis comes back after an outage (or a
restart that lost every key), the snapshot the backend writes on reconnecting writes each log
again, as far as Redis lacks it (the same script), so followers resume with nothing missed
and nothing twice.

Keys: ``{prefix}:events:{app}/{user}/{session}/{run_id}``, a stream; entries ``d`` (the SSE
event as sent, bytes) or ``end``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..._models import SessionKey
from ..._stream import RunStream, StreamPage, StreamWrite
from .._base import BackendUnavailable
from ._keys import KeyLayout, encode, show

logger = logging.getLogger(__package__)

READ_COUNT = 1000
"""Events per read; a follower that is further behind reads again at once."""

Command = tuple[str | int | bytes, ...]

# Adds the entries past the stream's newest (none of them if Redis has them all), then the end
# marker if the log has ended, and sets the expiry. ARGV: ttl_ms, maxlen, end id (0: none),
# then id, event pairs.
RESYNC = """
local top = 0
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then top = tonumber(string.sub(newest[1][1], 3)) end
for i = 4, #ARGV, 2 do
  local id = tonumber(ARGV[i])
  if id > top then
    redis.call('XADD', KEYS[1], 'MAXLEN', '=', ARGV[2], '0-' .. ARGV[i], 'd', ARGV[i + 1])
    top = id
  end
end
local ending = tonumber(ARGV[3])
if ending > top then
  redis.call('XADD', KEYS[1], 'MAXLEN', '=', tonumber(ARGV[2]) + 1, '0-' .. ARGV[3], 'end', '1')
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return top
"""


def events_key(keys: KeyLayout, key: SessionKey, run_id: str) -> str:
    return f"{keys.prefix}:events:{show(key)}/{encode(run_id)}"


class StreamLog:
    """The writer's side: the commands for each change, and what Redis is known to hold."""

    def __init__(self, keys: KeyLayout, ttl_ms: int) -> None:
        self.keys = keys
        self.ttl_ms = ttl_ms
        self.tops: dict[str, int] = {}
        """Stream key -> the newest id written to it (end marker included). Forgotten on
        reconnecting: Redis may have lost anything since."""
        self._refused: set[str] = set()

    def forget(self) -> None:
        self.tops.clear()

    def commands(self, writes: Sequence[StreamWrite]) -> list[Command]:
        """The command of a batch of changes to one log: the script that also writes a log
        again after an outage (``RESYNC``), given the events and the end (none if Redis has
        them already: the snapshot that followed a reconnect wrote them)."""
        first = writes[0]
        k = events_key(self.keys, first.key, first.run_id)
        top = self.tops.get(k)
        fresh = [w for w in writes if top is None or w.seq > top]
        if not fresh:
            return []
        last = fresh[-1]
        self.tops[k] = last.seq
        args: list[Any] = [
            last.keep_ms if last.end else self.ttl_ms,
            max(1, last.kept),
            last.seq if last.end else 0,
        ]
        for write in fresh:
            if not write.end:
                args += [write.seq, write.data]
        return [("EVAL", RESYNC, 1, k, *args)]

    def snapshot(self, pipe: Pipeline, streams: Sequence[RunStream]) -> int:
        """Queue the heartbeat's part: refresh the expiry of each active log Redis is up to
        date with, write again what it lacks of the others; returns how many commands."""
        count = 0
        now = time.monotonic()
        keys = {events_key(self.keys, stream.key, stream.run_id): stream for stream in streams}
        for gone in self.tops.keys() - keys.keys():
            del self.tops[gone]  # forgotten here: Redis lets it expire by itself
        for k, stream in keys.items():
            top = stream.last_id + 1 if stream.ended else stream.last_id
            if self.tops.get(k) == top:
                if not stream.ended:
                    pipe.pexpire(k, self.ttl_ms)
                    count += 1
                continue
            if stream.ended:
                ttl_ms = int(((stream.expires_at or now) - now) * 1000)
                if ttl_ms <= 0:
                    continue  # forgotten here too, any moment now
            else:
                ttl_ms = self.ttl_ms
            args: list[Any] = [ttl_ms, max(1, stream.kept), top if stream.ended else 0]
            first = stream.first_id
            for offset, data in enumerate(stream.read(first - 1)):
                args += [first + offset, data]
            pipe.execute_command("EVAL", RESYNC, 1, k, *args)
            self.tops[k] = top
            count += 1
        return count

    def check(self, results: Sequence[object]) -> None:
        """Log (once per log) what Redis refused of a snapshot's stream commands."""
        for result in results:
            if isinstance(result, BaseException) and str(result) not in self._refused:
                self._refused.add(str(result))
                logger.warning(
                    "adk-cancel: Redis refused to store a run's event log (%s: %s); followers "
                    "on other workers may not see it.",
                    type(result).__name__,
                    result,
                )

    def refused(self, write: StreamWrite, error: BaseException) -> None:
        """A change Redis refused: logged once per run; the heartbeat writes it again."""
        k = events_key(self.keys, write.key, write.run_id)
        self.tops.pop(k, None)
        if k in self._refused:
            return
        self._refused.add(k)
        logger.warning(
            "adk-cancel: could not write the events of run %s of %s to Redis (%s: %s); "
            "followers on other workers may not see them. Other runs are not affected.",
            write.run_id,
            show(write.key),
            type(error).__name__,
            error,
        )


class StreamReader:
    """The follower's side: reads another worker's log, with a connection pool of its own
    (a blocking read holds its connection, and returns bytes as they were written)."""

    def __init__(self, url: str, display_url: str, keys: KeyLayout, op_timeout_s: float) -> None:
        self.url = url
        self.display_url = display_url
        self.keys = keys
        self.op_timeout_s = op_timeout_s
        self._client: Redis | None = None

    def _redis(self) -> Redis:
        if self._client is None:
            # No read timeout of its own (a read blocks up to wait_s; redis-py's default of
            # 5 s would end a longer one): each read is bounded below. One retry on a fresh
            # connection when a pooled one turns out closed.
            self._client = Redis.from_url(
                self.url,
                socket_timeout=None,
                socket_connect_timeout=self.op_timeout_s,
                retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
            )
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await client.aclose()
                except (RedisError, OSError):
                    pass

    async def read(self, key: SessionKey, run_id: str, after: int, wait_s: float) -> StreamPage:
        """The events after id ``after``; with ``wait_s``, blocks up to that long for one.
        Raises ``BackendUnavailable`` when Redis cannot be reached."""
        k = events_key(self.keys, key, run_id)
        client = self._redis()
        try:
            with anyio.fail_after(wait_s + self.op_timeout_s):
                if wait_s > 0:
                    reply = await client.xread(
                        {k: f"0-{after}"}, count=READ_COUNT, block=max(1, int(wait_s * 1000))
                    )
                    events, ended = _events(reply)
                    return StreamPage(events=events, ended=ended, found=True)
                async with client.pipeline(transaction=False) as pipe:
                    pipe.xrange(k, "-", "+", count=1)
                    pipe.xrevrange(k, "+", "-", count=1)
                    pipe.xread({k: f"0-{after}"}, count=READ_COUNT)
                    oldest, newest, reply = await pipe.execute()
        except TimeoutError as exc:
            raise self._unavailable(f"no answer within {wait_s + self.op_timeout_s:g} s") from exc
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"{type(exc).__name__}: {exc}") from exc
        events, ended = _events(reply)
        if not oldest:
            return StreamPage()
        first_id = _seq(oldest[0][0])
        last_seq = _seq(newest[0][0])
        newest_ends = b"end" in newest[0][1]
        return StreamPage(
            events=events,
            ended=ended or newest_ends,
            found=True,
            first_id=first_id,
            last_id=last_seq - 1 if newest_ends else last_seq,
        )

    def _unavailable(self, cause: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"Redis at {self.display_url} is unreachable: {cause} (check that Redis is "
            "running and the cancel backend URL is right)"
        )


def _seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.rpartition("-")[2])


def _events(reply: Any) -> tuple[tuple[tuple[int, bytes], ...], bool]:
    """The (id, event) pairs of an XREAD reply (RESP2 or RESP3), and whether it ends."""
    if not reply:
        return (), False
    # RESP2: [[name, entries]]; RESP3: {name: [entries]}.
    entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
    events: list[tuple[int, bytes]] = []
    for entry_id, fields in entries:
        if b"end" in fields:
            return tuple(events), True
        events.append((_seq(entry_id), fields.get(b"d", b"")))
    return tuple(events), False
