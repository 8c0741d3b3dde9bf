"""The backend interface behind the run registry.

Every server process keeps its own registry of the runs it holds (``LocalNode``). A backend
connects those registries across processes: it announces this process's runs to the others,
lists and cancels runs held elsewhere, and hands cancels that arrive for this process to the
local registry. ``memory://`` has no other processes; ``redis://`` reaches them through Redis.

A backend that also implements :class:`StreamBackend` mirrors the event logs of rejoinable
runs (``_stream.py``), so a client can rejoin a run's stream through any worker; without it, a
run's stream can be rejoined only through the worker that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from .._models import CancelledRun, RunInfo, SessionKey
from .._order import CancelOrder
from .._stream import RunStream, StreamPage, StreamWrite


class BackendUnavailable(RuntimeError):
    """A cross-process operation could not reach the backend (answered as 503)."""


@runtime_checkable
class LocalNode(Protocol):
    """What a backend calls back into: this process's registry."""

    @property
    def node_id(self) -> str: ...

    def runs_here(self, key: SessionKey) -> list[RunInfo]:
        """The session's runs this process holds."""
        ...

    def all_runs_here(self) -> list[RunInfo]:
        """Every run this process holds."""
        ...

    async def cancel_here(self, order: CancelOrder) -> list[CancelledRun]:
        """Cancel the order's runs this process holds; the outcome of each."""
        ...

    def streams_here(self) -> list[RunStream]:
        """The event logs this process keeps (a backend writes them again after an outage)."""
        ...


@runtime_checkable
class CancelBackend(Protocol):
    """A cross-process channel for run announcements, cancels and run records.

    ``announce``, ``withdraw`` and ``save_record`` are called on the path of every run: they
    must neither block nor raise (queue the work on a task the backend owns).
    ``list_remote``, ``list_user_remote`` and ``cancel_remote`` cover the *other* processes
    only and raise ``BackendUnavailable`` when those cannot be reached. ``cancel_remote``
    takes user-wide orders too (``order.scope == "user"``: every session of ``order.key``'s
    app and user). Records are shared: ``list_records`` returns what every process saved,
    this one's included (``memory://`` keeps none; the registry keeps this process's own).
    """

    async def connect(self, node: LocalNode) -> None: ...

    async def disconnect(self) -> None: ...

    def announce(self, run: RunInfo) -> None: ...

    def withdraw(self, run: RunInfo) -> None: ...

    async def list_remote(self, key: SessionKey) -> list[RunInfo]: ...

    async def cancel_remote(self, order: CancelOrder) -> list[CancelledRun]: ...

    async def list_user_remote(self, app_name: str, user_id: str) -> list[RunInfo]:
        """Every run of one user in one app that other processes hold."""
        ...

    def save_record(self, record: RunInfo, keep: int, ttl_s: float) -> None:
        """Keep an ended run's record: the session's newest ``keep``, for ``ttl_s``."""
        ...

    async def list_records(self, key: SessionKey, limit: int) -> list[RunInfo]:
        """The session's saved records (at most ``limit``), newest first."""
        ...


@runtime_checkable
class StreamBackend(Protocol):
    """Optional part of a backend: the event logs of rejoinable runs, across processes.

    ``publish_events`` is called for every event of such a run: like ``announce``, it must
    neither block nor raise. ``read_events`` reads a log another process writes: the events
    after id ``after`` (waiting up to ``wait_s`` for one when there are none yet); it returns
    None when there are no other processes (``memory://``) and raises ``BackendUnavailable``
    when they cannot be reached.
    """

    def publish_events(self, write: StreamWrite) -> None: ...

    async def read_events(
        self, key: SessionKey, run_id: str, after: int, wait_s: float
    ) -> StreamPage | None: ...


LeaseMode = Literal["try", "queue", "jump"]
"""How a run asks for its session: ``try`` takes it only if it is free and nobody is queued;
``queue`` does the same or keeps (or takes) a place in the session's queue, first come first
served; ``jump`` takes it as soon as it is free, ahead of the queue."""


@dataclass(frozen=True)
class LeaseAnswer:
    """The outcome of one ``acquire_lease``."""

    granted: bool
    """The run holds its session now (it had it already, or took it)."""
    holder: tuple[str, str] | None = None
    """When not granted: (node id, run id) of the run holding the session, or of the first
    one queued for it; None if unknown."""
    full: bool = False
    """``queue`` only: the session's queue already has ``max_queued`` runs; not queued."""


@runtime_checkable
class SessionLeases(Protocol):
    """Optional backend methods: one run at a time per session, across processes.

    A backend without them still serves everything else; the busy policies then decide
    among this process's runs only. A lease names its holder as (node id, run id); it is
    released by its holder, and lapses by itself if the holder's process dies (the bound is
    the backend's to document). ``lease_poll_s`` is how often a waiting run asks again (a
    release by another process wakes nobody here); None: every release is local.
    """

    lease_poll_s: float | None

    async def acquire_lease(
        self, key: SessionKey, node_id: str, run_id: str, mode: LeaseMode, max_queued: int
    ) -> LeaseAnswer: ...

    async def release_lease(self, key: SessionKey, node_id: str, run_id: str) -> None:
        """Give the session back, and leave its queue; a no-op for a run holding neither."""
        ...
