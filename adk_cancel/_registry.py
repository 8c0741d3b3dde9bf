"""The run registry: every run this process holds, keyed by its session's full path."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from . import _metrics
from ._models import (
    CancelledRun,
    DisconnectPolicy,
    OnBusy,
    Route,
    RunInfo,
    SessionKey,
    StoppedBy,
)
from ._options import CancelOptions
from ._order import CancelOrder
from ._records import RunRecords
from ._stream import RunStream, RunStreams
from ._writes import SessionWrites, session_writes
from .adk.invocation import abort
from .backends import (
    BackendUnavailable,
    CancelBackend,
    MemoryBackend,
    StreamBackend,
    backend_from_url,
)

if TYPE_CHECKING:
    from google.adk.agents.invocation_context import InvocationContext
    from google.adk.sessions.base_session_service import BaseSessionService
    from opentelemetry.trace import Span

    from ._partial import StreamedText

logger = logging.getLogger("adk_cancel")

Message = MutableMapping[str, Any]

WAIT_MARGIN_S = 3.0
"""How long past the grace period a waiting cancel request waits for a forced run to end."""

# Set by the middleware around each run it owns; read by the plugin's before_run_callback,
# which runs in a task ADK created from the middleware's context.
current_run: contextvars.ContextVar[RunEntry | None] = contextvars.ContextVar(
    "adk_cancel_current_run", default=None
)


class Flag:
    """An ``asyncio.Event`` that makes its event only when someone waits: every run has two
    flags, and on a server full of runs waiting in tools almost none is ever waited on (an
    event and its waiter queue are about 800 bytes)."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()


class _Weakly:
    """Lets a slotted ``RunEntry`` be a weak dictionary key (``_partial``, ``_rollback``)."""

    __slots__ = ("__weakref__",)


# Slots: about 40 fields, kept for every run in flight, in a dict of their own they would be
# the biggest part of what adk-cancel holds per run.
@dataclass(eq=False, slots=True)
class RunEntry(_Weakly):
    """One run in flight. Created by the middleware, completed by the plugin."""

    registry: RunRegistry
    key: SessionKey
    route: Route
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    invocation_id: str | None = None
    invocation_context: InvocationContext | None = None
    producer: asyncio.Task[object] | None = None
    session_service: BaseSessionService | None = None
    writes: SessionWrites | None = None
    cancel_order: CancelOrder | None = None
    """The order that cancelled the run (the first one: later ones are no-ops)."""
    cancel_mono: float | None = None
    forced: bool = False
    failed: bool = False
    disconnected: bool = False
    on_disconnect: DisconnectPolicy = "cancel"
    detached: bool = False
    """The client left and the run went on (disconnect policy ``continue``): nobody was
    attached when it ended."""
    ended: bool = False
    """The run ended on its own (its answer was complete) before any cancel reached it."""
    stopped_by: StoppedBy | None = None
    stop_ms: float | None = None
    repaired: bool = False
    unlisted: bool = False
    """Out of the listings, its record made: just before its client's last byte."""
    cancel_requested: Flag = field(default_factory=lambda: Flag())
    finished: Flag = field(default_factory=lambda: Flag())
    on_cancel: Callable[[], None] | None = None
    """Called on the first cancel: the middleware starts the run's cancel watcher."""
    output_taps: list[Callable[[Message], None]] = field(default_factory=list)
    """Called with every body chunk and websocket message the app sends its client (keep
    them cheap: they run on every streamed event)."""
    streamed_text: StreamedText | None = None
    """What the client was streamed of the text so far (``_partial``; ``keep_partial``)."""
    cancel_callbacks: list[Callable[[], None]] = field(default_factory=list)
    """Called once, on the event loop, when the run's cancel is signalled (``adk_cancel.tools``
    hangs tool clean-up here: killing a subprocess, waking a sync tool's wait). Made with
    the run, not on the first callback: sync tools add theirs from threads, and two threads
    making the list at once would lose one callback."""
    error: str | None = None
    """Why the run failed (``ErrorType: message``), if it did."""
    http_status: int | None = None
    """The status of the answer the app started (HTTP routes)."""
    idle_watch: bool = False
    """Whether an idle deadline watches ``last_event_mono`` (set before the run starts)."""
    last_event_mono: float = 0.0
    """When the run last sent an event (kept only while ``idle_watch``)."""
    span: Span | None = None
    """The OpenTelemetry span of the run's ADK invocation, when tracing records one."""
    on_busy: OnBusy | None = None
    """The busy policy the run is admitted under (see ``_busy.py``)."""
    queued: bool = False
    """Waiting for its session to be free: the app has not been called."""
    replaced: tuple[CancelledRun, ...] = ()
    """The runs its busy policy cancelled so that it could start."""
    rolled_back: bool | None = None
    """With a rollback: whether the session was rewound (None: no rollback asked)."""
    rollback_error: str | None = None
    """Why the rollback did not happen."""

    @property
    def cancel_reason(self) -> str | None:
        return self.cancel_order.reason if self.cancel_order is not None else None

    def attach(self, ic: InvocationContext, producer: asyncio.Task[object] | None) -> None:
        """Called from ADK's before_run_callback with the run's invocation context."""
        self.invocation_context = ic
        self.invocation_id = ic.invocation_id
        self.producer = producer
        self.session_service = ic.session_service
        self.writes = session_writes(ic.session_service)
        session = ic.session
        self.registry._rekey(self, SessionKey(session.app_name, session.user_id, session.id))
        if self.cancel_order is not None:
            # The cancel arrived while ADK was still loading the session: abort before the
            # agent starts, so it never runs.
            abort(ic)
        self.registry.backend.announce(self.info())

    def request_cancel(self, order: CancelOrder) -> None:
        """Signal a cancel; idempotent. The middleware's watcher does the rest."""
        if self.cancel_order is not None or self.finished.is_set():
            return
        if self.ended:
            # Too late: the answer is complete, and aborting now would only make the
            # outcome look like a stop (ADK's is_aborted flag is all that would change).
            self.stopped_by = "finished"
            return
        self.cancel_order = order
        self.cancel_mono = time.monotonic()
        if self.invocation_context is not None:
            # Abort right here rather than in the watcher task: it saves a loop turn.
            abort(self.invocation_context)
        self.cancel_requested.set()
        if self.on_cancel is not None:
            self.on_cancel()
        for callback in list(self.cancel_callbacks):  # tool threads add and remove theirs
            try:
                callback()
            except Exception:
                logger.exception("adk-cancel: a cancel callback failed for run %s", self.run_id)
        self.registry.backend.announce(self.info())

    def writing(self) -> bool:
        """Whether the run's session has a write in flight or waiting: not a moment to
        cancel its task (see _writes.py)."""
        return self.writes is not None and self.writes.pending(self.key.session_id)

    def stop_kind(self) -> StoppedBy:
        """How the cancelled run is ending, as far as known now."""
        return "error" if self.failed else "force" if self.forced else "abort"

    def info(self) -> RunInfo:
        return RunInfo(
            run_id=self.run_id,
            app_name=self.key.app_name,
            user_id=self.key.user_id,
            session_id=self.key.session_id,
            invocation_id=self.invocation_id,
            route=self.route,
            started_at=self.started_at,
            elapsed_ms=round((time.monotonic() - self.started_mono) * 1000, 3),
            worker=self.registry.node_id,
            cancelling=self.cancel_order is not None,
            status="cancelling"
            if self.cancel_order is not None
            else "queued"
            if self.queued
            else "running",
            on_disconnect=self.on_disconnect,
            detached=self.detached,
            on_busy=self.on_busy,
        )

    def outcome(self) -> CancelledRun:
        done = self.finished.is_set()
        return CancelledRun(
            run_id=self.run_id,
            session_id=self.key.session_id,
            invocation_id=self.invocation_id,
            route=self.route,
            worker=self.registry.node_id,
            stopped=done,
            stopped_by=self.stopped_by if done else None,
            stop_ms=self.stop_ms if done else None,
            repaired=self.repaired,
            rolled_back=self.rolled_back,
            rollback_error=self.rollback_error,
        )


class RunRegistry:
    """This process's active runs, and the door to runs held by other processes.

    Several runs of one session coexist (a second ``/run`` does not replace the first);
    each is removed by the middleware's ``finally`` however it ends.
    """

    def __init__(self, options: CancelOptions | None = None) -> None:
        self.options = options if options is not None else CancelOptions()
        backend = self.options.cancel_backend
        self.backend: CancelBackend = (
            backend_from_url(backend) if isinstance(backend, str) else backend
        )
        self.grace_s = self.options.cancel_grace_s
        self._node_id = (
            self.options.cancel_node_id
            or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self.plugin_installed = True
        self.accepting = True
        """False once the server is shutting down: new runs are refused."""
        self.run_end_hooks: list[Callable[[RunEntry], None]] = []
        """Called with each run as it leaves the registry, however it ended."""
        self.records = RunRecords(self.options, self.backend)
        """Records of the runs that ended (``/runs?status=``)."""
        self.run_end_hooks.append(self.records.on_run_end)
        self.run_end_hooks.append(_metrics.run_ended)
        _metrics.watch_registry(self)
        self.lifespans = 0
        """How many starts of the app are running (the app's lifespan keeps count)."""
        self._by_key: dict[SessionKey, dict[str, RunEntry]] = {}
        backend = self.backend
        self.streams = RunStreams(
            self.options,
            backend.publish_events
            if isinstance(backend, StreamBackend) and not isinstance(backend, MemoryBackend)
            else None,
        )
        """The event logs of rejoinable runs (``_stream.py``)."""
        self.run_end_hooks.append(self.streams.run_ended)
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the backend (idempotent; also done lazily on first use)."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self._started:
                await self.backend.connect(self)
                self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.backend.disconnect()

    # -- LocalNode: what a backend calls back into -----------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    def runs_here(self, key: SessionKey) -> list[RunInfo]:
        """The session's runs that this process holds."""
        return [e.info() for e in self._by_key.get(key, {}).values()]

    def all_runs_here(self) -> list[RunInfo]:
        """Every run this process holds (the backend's heartbeat re-announces them)."""
        return [e.info() for runs in self._by_key.values() for e in runs.values()]

    def user_runs_here(self, app_name: str, user_id: str) -> list[RunInfo]:
        """Every run of one user in one app that this process holds."""
        return [e.info() for e in self._entries(CancelOrder.for_user(app_name, user_id, ""))]

    def all_entries_here(self) -> list[RunEntry]:
        """Every run this process holds (metrics count them)."""
        return [e for runs in self._by_key.values() for e in runs.values()]

    def _entries(self, order: CancelOrder) -> list[RunEntry]:
        """This process's runs that ``order`` is for: its session's, or its user's."""
        if order.scope == "session":
            runs: list[RunEntry] = list(self._by_key.get(order.key, {}).values())
        else:
            runs = [e for k, rs in self._by_key.items() if order.covers(k) for e in rs.values()]
        return [e for e in runs if order.matches(e.invocation_id, e.run_id)]

    async def cancel_here(self, order: CancelOrder) -> list[CancelledRun]:
        """Cancel the order's runs that this process holds."""
        entries = [
            e
            for e in self._entries(order)
            # A newer run replacing the active ones leaves the runs waiting beside it alone.
            if not (order.cause == "busy" and e.queued)
        ]
        for entry in entries:
            entry.request_cancel(order)
        if order.wait:
            with anyio.move_on_after(order.timeout_s):
                for entry in entries:
                    await entry.finished.wait()
        return [e.outcome() for e in entries]

    def streams_here(self) -> list[RunStream]:
        """The event logs this process keeps."""
        return self.streams.here()

    # -- used by the middleware and the routes ---------------------------------------------

    def default_timeout_s(self) -> float:
        return self.grace_s + WAIT_MARGIN_S

    def register(self, key: SessionKey, route: Route, on_busy: OnBusy | None = None) -> RunEntry:
        # A run under a busy policy other than allow waits for its session before it starts.
        queued = on_busy is not None and on_busy != "allow"
        entry = RunEntry(registry=self, key=key, route=route, on_busy=on_busy, queued=queued)
        self._by_key.setdefault(key, {})[entry.run_id] = entry
        self._idle.clear()
        self.backend.announce(entry.info())
        _metrics.run_started(entry)
        return entry

    def unregister(self, entry: RunEntry) -> None:
        """The run leaves the listings, and its record is made (once)."""
        if entry.unlisted:
            return
        entry.unlisted = True
        for hook in self.run_end_hooks:
            try:
                hook(entry)
            except Exception:
                logger.exception("adk-cancel: a run-end hook failed for run %s", entry.run_id)
        runs = self._by_key.get(entry.key)
        if runs is not None and runs.pop(entry.run_id, None) is not None and not runs:
            del self._by_key[entry.key]
        if not self._by_key:
            self._idle.set()
        self.backend.withdraw(entry.info())

    def entries_here(self, key: SessionKey) -> list[RunEntry]:
        """The session's runs that this process holds, as entries."""
        return list(self._by_key.get(key, {}).values())

    def keys_here(self) -> list[SessionKey]:
        """The sessions this process holds runs of."""
        return list(self._by_key)

    async def wait_idle(self) -> None:
        """Until this process holds no run."""
        await self._idle.wait()

    def _rekey(self, entry: RunEntry, key: SessionKey) -> None:
        if key == entry.key:
            return
        old = self._by_key.get(entry.key)
        if old is not None and old.pop(entry.run_id, None) is not None and not old:
            del self._by_key[entry.key]
        self.backend.withdraw(entry.info())
        entry.key = key
        self._by_key.setdefault(key, {})[entry.run_id] = entry

    async def runs_everywhere(
        self, key: SessionKey
    ) -> tuple[list[RunInfo], BackendUnavailable | None]:
        """The session's runs on every process. When other processes can't be reached, this
        process's runs, and the backend's error beside them."""
        await self.start()
        local = self.runs_here(key)
        try:
            remote = await self.backend.list_remote(key)
        except BackendUnavailable as exc:
            return local, exc
        seen = {r.run_id for r in local}
        return local + [r for r in remote if r.run_id not in seen], None

    async def user_runs_everywhere(
        self, app_name: str, user_id: str
    ) -> tuple[list[RunInfo], BackendUnavailable | None]:
        """Every run of one user in one app, on every process (as ``runs_everywhere``)."""
        await self.start()
        local = self.user_runs_here(app_name, user_id)
        list_user = getattr(self.backend, "list_user_remote", None)
        if list_user is None:  # a backend written before user-wide cancels
            return local, None
        try:
            remote: list[RunInfo] = await list_user(app_name, user_id)
        except BackendUnavailable as exc:
            return local, exc
        seen = {r.run_id for r in local}
        return local + [r for r in remote if r.run_id not in seen], None

    async def cancel_everywhere(
        self, order: CancelOrder
    ) -> tuple[list[CancelledRun], BackendUnavailable | None]:
        """Cancel the order's runs here and on every other process.

        Local runs are cancelled even when the backend is down; the backend's error is
        returned beside them for the route to report.
        """
        await self.start()
        local_task = asyncio.ensure_future(self.cancel_here(order))
        try:
            remote = await self.backend.cancel_remote(order)
            error = None
        except BackendUnavailable as exc:
            remote, error = [], exc
        finally:
            local = await local_task
        return local + remote, error
