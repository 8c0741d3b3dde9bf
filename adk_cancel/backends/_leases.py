"""Session leases within one process: the ``memory://`` backend's, and the fallback of the
busy policies on a backend without leases (or while it is unreachable).

Every caller runs on one event loop, and nothing here awaits, so each call is atomic.
"""

from __future__ import annotations

from .._models import SessionKey
from ._base import LeaseAnswer, LeaseMode

_Holder = tuple[str, str]


class LocalLeases:
    """One holder and one first-come-first-served queue per session, in this process."""

    lease_poll_s: float | None = None

    def __init__(self) -> None:
        self._holders: dict[SessionKey, _Holder] = {}
        self._queues: dict[SessionKey, list[_Holder]] = {}

    async def acquire_lease(
        self, key: SessionKey, node_id: str, run_id: str, mode: LeaseMode, max_queued: int
    ) -> LeaseAnswer:
        me = (node_id, run_id)
        holder = self._holders.get(key)
        if holder == me:
            return LeaseAnswer(granted=True)
        queue = self._queues.get(key, [])
        first = queue[0] if queue else None
        if holder is None and (mode == "jump" or first is None or first == me):
            self._holders[key] = me
            self._leave(key, me)
            return LeaseAnswer(granted=True)
        if mode == "queue" and me not in queue:
            if len(queue) >= max_queued:
                return LeaseAnswer(granted=False, holder=holder or first, full=True)
            self._queues.setdefault(key, []).append(me)
            first = first or me
        return LeaseAnswer(granted=False, holder=holder or first)

    async def release_lease(self, key: SessionKey, node_id: str, run_id: str) -> None:
        me = (node_id, run_id)
        if self._holders.get(key) == me:
            del self._holders[key]
        self._leave(key, me)

    def held(self) -> int:
        """How many sessions are held (for tests: nothing may be left behind)."""
        return len(self._holders) + sum(len(q) for q in self._queues.values())

    def _leave(self, key: SessionKey, me: _Holder) -> None:
        queue = self._queues.get(key)
        if queue is not None and me in queue:
            queue.remove(me)
            if not queue:
                del self._queues[key]
