"""Run records: what happened to each run that ended, for ``GET .../runs?status=``.

A record is the run's ``RunInfo`` with how it ended filled in (status, end time, cancel
reason and cause, ``stopped_by``, ``stop_ms``, rollback, error). It is built once, in a
``RunRegistry.run_end_hooks`` hook, which every ending path goes through (finished, failed,
cancelled by a request, a disconnect, a deadline or a shutdown), so nothing is recorded per
event. Records are kept

- in this process, bounded per session (``run_records_per_session``), in time
  (``run_records_ttl_s``) and in all (``MAX_LOCAL_RECORDS``), so a worker answers for its own
  runs even while Redis is down; and
- through the backend (``save_record``), which for ``redis://`` keeps each session's list in
  Redis with an expiry, so any worker lists the records of every worker.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._models import ACTIVE_STATUSES, ENDED_STATUSES, RunInfo, RunStatus, SessionKey
from ._options import CancelOptions
from .backends import BackendUnavailable, CancelBackend

if TYPE_CHECKING:
    from ._registry import RunEntry

logger = logging.getLogger("adk_cancel")

MAX_LOCAL_RECORDS = 10_000
"""At most this many records in one process's memory, all sessions together (the oldest
sessions' records go first): a bound on memory whatever the traffic."""

STATUS_FILTERS = ("active", "all", *ACTIVE_STATUSES, *ENDED_STATUSES)
"""What ``?status=`` takes (several, comma-separated): ``active`` (the default: queued,
running, cancelling), ``all``, or any single status."""


def status_of(entry: RunEntry) -> RunStatus:
    """How a run ended, from what its entry saw."""
    order = entry.cancel_order
    if order is not None and entry.stopped_by != "finished":
        return "timed_out" if order.cause == "deadline" else "cancelled"
    if entry.error is not None or (entry.http_status or 200) >= 500:
        return "failed"
    if entry.invocation_id is None and (entry.http_status or 200) >= 400:
        return "failed"  # ADK refused the request (no such session, bad body): no run
    return "finished"


def record_of(entry: RunEntry) -> RunInfo:
    """The record of a run that is leaving the registry."""
    ended_mono = time.monotonic()
    ended_at = entry.started_at + (ended_mono - entry.started_mono)
    order = entry.cancel_order
    status = status_of(entry)
    error = entry.error
    if error is None and status == "failed" and entry.http_status is not None:
        error = f"HTTP {entry.http_status}"
    cancelled_at = None
    if entry.cancel_mono is not None:
        cancelled_at = round(entry.started_at + (entry.cancel_mono - entry.started_mono), 6)
    return RunInfo(
        run_id=entry.run_id,
        app_name=entry.key.app_name,
        user_id=entry.key.user_id,
        session_id=entry.key.session_id,
        invocation_id=entry.invocation_id,
        route=entry.route,
        started_at=entry.started_at,
        elapsed_ms=round((ended_mono - entry.started_mono) * 1000, 3),
        worker=entry.registry.node_id,
        status=status,
        ended_at=round(ended_at, 6),
        cancelled_at=cancelled_at,
        cancel_reason=order.reason if order is not None else None,
        cancelled_by=order.cause if order is not None else None,
        stopped_by=entry.stopped_by if order is not None else None,
        stop_ms=entry.stop_ms if order is not None else None,
        repaired=entry.repaired if order is not None else None,
        rolled_back=entry.rolled_back,
        rollback_error=entry.rollback_error,
        detached=entry.detached,
        error=error,
    )


def parse_status(value: str | None) -> frozenset[RunStatus]:
    """The statuses ``?status=`` asks for; raises ``ValueError`` saying what it takes."""
    wanted: set[RunStatus] = set()
    for part in (value or "active").split(","):
        name = part.strip().lower()
        if name == "active":
            wanted.update(ACTIVE_STATUSES)
        elif name == "all":
            wanted.update(ACTIVE_STATUSES + ENDED_STATUSES)
        elif name in ACTIVE_STATUSES or name in ENDED_STATUSES:
            wanted.add(name)
        else:
            raise ValueError(
                f"{part!r} is not a run status: use {', '.join(STATUS_FILTERS)} "
                "(several comma-separated)"
            )
    return frozenset(wanted)


class RunRecords:
    """This process's records, bounded, and the door to the backend's."""

    def __init__(self, options: CancelOptions, backend: CancelBackend) -> None:
        self.keep = options.run_records_per_session
        self.ttl_s = options.run_records_ttl_s
        self.backend = backend
        self._by_key: OrderedDict[SessionKey, deque[RunInfo]] = OrderedDict()
        """Sessions by their last record (oldest first), each its records (newest last)."""
        self._count = 0
        self._warned = False

    def on_run_end(self, entry: RunEntry) -> None:
        """The registry's run-end hook: record the run here and through the backend."""
        if self.keep <= 0 or self.ttl_s <= 0:
            return
        record = record_of(entry)
        self.add(record)
        save = getattr(self.backend, "save_record", None)
        if save is not None:
            save(record, self.keep, self.ttl_s)
        elif not self._warned:
            self._warned = True
            logger.warning(
                "adk-cancel: the cancel backend %r has no save_record(); run records stay on "
                "the worker that held the run",
                type(self.backend).__name__,
            )

    def add(self, record: RunInfo) -> None:
        key = SessionKey(record.app_name, record.user_id, record.session_id)
        runs = self._by_key.get(key)
        if runs is None:
            runs = self._by_key[key] = deque()
        else:
            self._by_key.move_to_end(key)
        runs.append(record)
        self._count += 1
        if len(runs) > self.keep:
            runs.popleft()
            self._count -= 1
        self._prune(record.ended_at or time.time())

    def _prune(self, now: float) -> None:
        """Drop the sessions whose newest record has expired, and the oldest sessions while
        there are too many records in all."""
        horizon = now - self.ttl_s
        while self._by_key:
            key, runs = next(iter(self._by_key.items()))
            if self._count <= MAX_LOCAL_RECORDS and (runs[-1].ended_at or 0) >= horizon:
                break
            del self._by_key[key]
            self._count -= len(runs)

    def here(self, key: SessionKey) -> list[RunInfo]:
        """This process's unexpired records of a session, newest first."""
        horizon = time.time() - self.ttl_s
        return [r for r in reversed(self._by_key.get(key, ())) if (r.ended_at or 0) >= horizon]

    async def everywhere(self, key: SessionKey) -> tuple[list[RunInfo], BackendUnavailable | None]:
        """A session's records from every worker (newest first); this worker's alone, and
        the backend's error, when the backend cannot be reached."""
        local = self.here(key)
        read = getattr(self.backend, "list_records", None)
        if read is None or self.keep <= 0:
            return local, None
        try:
            remote: list[RunInfo] = await read(key, self.keep)
        except BackendUnavailable as exc:
            return local, exc
        horizon = time.time() - self.ttl_s
        merged = _unique([*local, *remote])
        merged = [r for r in merged if (r.ended_at or 0) >= horizon]
        merged.sort(key=lambda r: r.ended_at or 0, reverse=True)
        return merged[: self.keep], None


def _unique(records: Iterable[RunInfo]) -> list[RunInfo]:
    seen: set[str] = set()
    out = []
    for record in records:
        if record.run_id not in seen:
            seen.add(record.run_id)
            out.append(record)
    return out
