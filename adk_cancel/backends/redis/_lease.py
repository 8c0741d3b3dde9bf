"""Per-session leases in Redis: at most one run per session across workers, and a
first-come-first-served queue of the runs waiting for it.

Keys (beside ``_keys.py``'s, same prefix and id encoding):

- ``{prefix}:lease:{app}/{user}/{session}``: string ``{node}/{run}`` with a PX expiry of
  ``announce_ttl_s``, renewed every third of it by the holder's process. A crashed worker's
  lease lapses within ``announce_ttl_s``.
- ``{prefix}:queue:{app}/{user}/{session}``: sorted set of the runs queued for the session,
  scored by arrival (Redis's clock in microseconds, strictly increasing);
- ``{prefix}:seen:{app}/{user}/{session}``: hash, queued run -> when it last asked (ms). A
  waiting run asks every ``LEASE_POLL_S``; one that has not asked for ``announce_ttl_s``
  (its worker crashed) loses its place when it reaches the head of the queue.

Each acquire, release and renewal is one Lua script, so it is atomic: two workers can never
both take a session. Scripts touch only the session's own keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio import Redis

from ..._models import SessionKey
from .._base import LeaseAnswer, LeaseMode
from ._keys import KeyLayout, decode, encode, show

logger = logging.getLogger(__package__)

LEASE_POLL_S = 0.05
"""How often a run waiting for a session held on another worker asks again; a release on
this worker wakes its own waiters at once."""

_ACQUIRE = """
local holder, mode = ARGV[1], ARGV[2]
local ttl, max_queued = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('GET', KEYS[1])
if current == holder then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, '', 0}
end
local head = false
while true do
  local first = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not first then break end
  local seen = tonumber(redis.call('HGET', KEYS[3], first) or '0')
  if first == holder or now_ms - seen <= ttl then
    head = first
    break
  end
  redis.call('ZREM', KEYS[2], first)
  redis.call('HDEL', KEYS[3], first)
end
if not current and (mode == 'jump' or not head or head == holder) then
  redis.call('SET', KEYS[1], holder, 'PX', ttl)
  redis.call('ZREM', KEYS[2], holder)
  redis.call('HDEL', KEYS[3], holder)
  return {1, '', 0}
end
local full = 0
if mode == 'queue' then
  if redis.call('ZSCORE', KEYS[2], holder) then
    redis.call('HSET', KEYS[3], holder, now_ms)
  elseif redis.call('ZCARD', KEYS[2]) >= max_queued then
    full = 1
  else
    local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]
    if last and tonumber(last) >= score then score = tonumber(last) + 1 end
    redis.call('ZADD', KEYS[2], score, holder)
    redis.call('HSET', KEYS[3], holder, now_ms)
    if not head then head = holder end
  end
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return {0, current or head or '', full}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def _holder(node_id: str, run_id: str) -> str:
    return f"{encode(node_id)}/{encode(run_id)}"


def _parse_holder(value: str) -> tuple[str, str] | None:
    node, sep, run = value.partition("/")
    node_id, run_id = decode(node), decode(run)
    if not sep or node_id is None or run_id is None:
        return None
    return node_id, run_id


class RedisLeases:
    """The leases of one process: acquire, release, and renew those it holds."""

    def __init__(self, keys: KeyLayout, ttl_s: float) -> None:
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.renew_every_s = ttl_s / 3
        self._held: dict[tuple[SessionKey, str], None] = {}
        """(session, holder) of every lease this process holds: the renewal's list."""

    def _keys(self, key: SessionKey) -> list[str]:
        where = show(key)
        prefix = self.keys.prefix
        return [f"{prefix}:lease:{where}", f"{prefix}:queue:{where}", f"{prefix}:seen:{where}"]

    async def acquire(
        self,
        client: Redis,
        key: SessionKey,
        node_id: str,
        run_id: str,
        mode: LeaseMode,
        max_queued: int,
    ) -> LeaseAnswer:
        holder = _holder(node_id, run_id)
        answer: Any = await client.eval(
            _ACQUIRE, 3, *self._keys(key), holder, mode, self.ttl_ms, max_queued
        )
        granted, other, full = int(answer[0]), str(answer[1]), int(answer[2])
        if granted:
            self._held[(key, holder)] = None
            return LeaseAnswer(granted=True)
        return LeaseAnswer(
            granted=False, holder=_parse_holder(other) if other else None, full=bool(full)
        )

    async def release(self, client: Redis, key: SessionKey, node_id: str, run_id: str) -> None:
        holder = _holder(node_id, run_id)
        # Forgotten first: a release that fails leaves the lease to lapse, not to be renewed.
        self._held.pop((key, holder), None)
        await client.eval(_RELEASE, 3, *self._keys(key), holder)

    async def renew(self, client: Redis) -> None:
        """Extend every lease this process holds; forget those it turns out not to hold."""
        held = list(self._held)
        if not held:
            return
        async with client.pipeline(transaction=False) as pipe:
            for key, holder in held:
                pipe.eval(_RENEW, 1, self._keys(key)[0], holder, self.ttl_ms)
            results = await pipe.execute(raise_on_error=False)
        for (key, holder), result in zip(held, results, strict=True):
            if result == 0 and (key, holder) in self._held:
                # It lapsed (Redis was unreachable longer than the TTL) and may be another
                # run's now: two runs of this session may overlap until this one ends.
                del self._held[(key, holder)]
                logger.warning(
                    "adk-cancel: the lease of session %s lapsed while its run was still going "
                    "(Redis unreachable for longer than announce_ttl_s?)",
                    show(key),
                )

    async def keep(
        self, client: Callable[[], Redis], failures: tuple[type[BaseException], ...]
    ) -> None:
        """Renew the held leases every third of the TTL, until cancelled."""
        errors: tuple[type[BaseException], ...] = (TimeoutError, *failures)
        while True:
            await anyio.sleep(self.renew_every_s)
            try:
                with anyio.fail_after(max(1.0, self.renew_every_s)):
                    await self.renew(client())
            except errors as exc:
                logger.debug("adk-cancel: could not renew session leases: %r", exc)


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """End a task this module started (the renewal), and wait for it."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
