"""The busy policy: what a run does when its session already has an active run, on this
worker or any other.

| ``on_busy`` | the new run                                   | the active run            |
|-------------|-----------------------------------------------|---------------------------|
| allow       | starts at once (ADK's behaviour: both run)    | runs on                   |
| reject      | 409 naming the active runs; nothing starts    | runs on                   |
| interrupt   | starts once the active runs are stopped and   | cancelled (cause busy),   |
|             | sealed; header ``x-adk-replaced`` (live: the  | its client answered as    |
|             | first message) names them                     | for any cancel            |
| rollback    | as interrupt, once their turns are undone     | cancelled, rolled back    |
| enqueue     | waits (listed ``queued``) and starts when the | runs on                   |
|             | session is free, in arrival order; 429 past   |                           |
|             | ``max_queued``                                |                           |

A run under any policy but allow holds its session's lease (the backend's, so one run per
session across workers; see ``backends/_base.py``) from admission until it has ended, been
sealed, repaired and rolled back. Runs started under allow hold no lease: a later run under
another policy still treats them as active (reject sees them, interrupt cancels them, enqueue
waits for them). Without a backend that has leases, or while it is unreachable, the decision
is this worker's alone (``LocalLeases``).

The policy: the ``X-ADK-On-Busy`` header, else (``/run_live``) the ``on_busy`` query
parameter, else the server's ``on_busy`` option.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, get_args
from urllib.parse import parse_qs

import anyio

from ._models import BusyResponse, OnBusy, RunInfo, SessionKey
from ._order import CancelOrder
from ._registry import RunEntry, RunRegistry
from .backends import BackendUnavailable, LeaseAnswer, LeaseMode, LocalLeases, SessionLeases

logger = logging.getLogger("adk_cancel")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

HEADER = "x-adk-on-busy"
"""Request header naming the busy policy of one run."""

QUERY = "on_busy"
"""``/run_live`` query parameter naming it (a browser's WebSocket cannot send headers)."""

REPLACED_HEADER = b"x-adk-replaced"
"""Response header of a run that replaced others: a JSON list of their cancel outcomes."""

POLICIES: tuple[str, ...] = get_args(OnBusy)

_MODES: dict[str, LeaseMode] = {
    "reject": "try",
    "enqueue": "queue",
    "interrupt": "jump",
    "rollback": "jump",
}
RECHECK_S = 1.0
"""How long a waiting run trusts its wake-ups before it asks again anyway."""
RELEASE_S = 2.0
"""Bound on giving a lease back; one that cannot be given back lapses by itself."""
LISTING_TRIES = 5
"""A 409 names the holder: its listing may lag its lease by a round trip; ask this often."""


class Refusal(Exception):
    """The run is refused by its busy policy: answer ``status`` with ``body``."""

    def __init__(self, status: int, body: BusyResponse) -> None:
        super().__init__(body.detail)
        self.status = status
        self.body = body


def policy_from(
    headers: Iterable[tuple[bytes, bytes]], query: bytes | None, default: OnBusy
) -> OnBusy:
    """The run's busy policy; raises ``ValueError`` saying what to send instead."""
    value: str | None = None
    source = "The X-ADK-On-Busy header"
    if query:
        values = parse_qs(query.decode("latin-1")).get(QUERY)
        if values:
            value, source = values[0], f"The {QUERY} query parameter"
    if value is None:
        for name, raw in headers:
            if name.lower() == HEADER.encode():
                value = raw.decode("latin-1")
                break
    if value is None:
        return default
    normalized = value.strip().lower()
    if normalized not in POLICIES:
        raise ValueError(f"{source} must be one of {', '.join(POLICIES)}; got {value[:40]!r}")
    return normalized  # type: ignore[return-value]  # checked against the Literal above


def replaced_json(entry: RunEntry) -> str:
    """The runs ``entry`` replaced, as JSON (ASCII: it goes in a header)."""
    return json.dumps([r.model_dump(mode="json") for r in entry.replaced], separators=(",", ":"))


def replaced_message(entry: RunEntry) -> dict[str, Any]:
    """The first message of a ``/run_live`` that replaced runs (shaped like an event)."""
    return {
        "id": f"adk-cancel-{entry.run_id}",
        "author": "adk-cancel",
        "timestamp": time.time(),
        "onBusy": entry.on_busy,
        "replaced": [r.model_dump(mode="json") for r in entry.replaced],
    }


class SessionGate:
    """Admits each run of a session under its busy policy; one per registry's middleware."""

    def __init__(self, registry: RunRegistry) -> None:
        self.registry = registry
        self.local = LocalLeases()
        """Leases of this process: the decision when the backend has none or is down."""
        self._touched: dict[str, list[SessionLeases]] = {}
        """run id -> where it holds (or waits for) its session: what to give back."""
        self._events: dict[SessionKey, anyio.Event] = {}
        self._waiting: Counter[SessionKey] = Counter()
        registry.run_end_hooks.append(lambda entry: self._notify(entry.key))

    @property
    def default(self) -> OnBusy:
        return self.registry.options.on_busy

    # -- admission -------------------------------------------------------------------------

    async def admit(
        self, entry: RunEntry, on_wait: Callable[[], Awaitable[None]] | None = None
    ) -> bool:
        """Wait until ``entry`` may start under its policy: True. False: it was cancelled
        while it waited (its client gets the cancelled answer). Raises ``Refusal``.
        ``on_wait`` is awaited once, before the first wait."""
        policy = entry.on_busy
        if policy is None or policy == "allow":
            return True
        mode = _MODES[policy]
        waited = False
        gone: set[str] = set()
        """Runs this one's cancels reported stopped: another worker may list them a moment
        longer (its withdrawal is written after the run ended)."""
        self._waiting[entry.key] += 1
        try:
            while entry.cancel_order is None:
                event = self._event(entry.key)
                answer = await self._acquire(entry, mode)
                if answer.full:
                    raise await self._refusal(entry, 429)
                unleased: list[RunInfo] = []
                if answer.granted:
                    unleased = await self._unleased(entry, gone)
                    if not unleased and entry.cancel_order is None:
                        entry.queued = False
                        self.registry.backend.announce(entry.info())
                        return True
                if entry.cancel_order is not None:
                    break
                if policy == "reject":
                    raise await self._refusal(entry, 409)
                if not waited:
                    waited = True
                    if on_wait is not None:
                        await on_wait()
                if policy in ("interrupt", "rollback") and await self._replace(entry, policy, gone):
                    continue
                await self._wait(entry, event)
        except Refusal:
            await self.release(entry)
            raise
        finally:
            self._waiting[entry.key] -= 1
            if not self._waiting[entry.key]:
                del self._waiting[entry.key]
                self._events.pop(entry.key, None)
        return False

    async def _acquire(self, entry: RunEntry, mode: LeaseMode) -> LeaseAnswer:
        backend = self.registry.backend
        leases: SessionLeases = backend if isinstance(backend, SessionLeases) else self.local
        max_queued = self.registry.options.max_queued
        if leases is not self.local:
            try:
                return await self._ask(leases, entry, mode, max_queued)
            except BackendUnavailable as exc:
                logger.warning(
                    "adk-cancel: run %s (session %s): %s; its busy policy (%s) decides among "
                    "this worker's runs only",
                    entry.run_id,
                    entry.key.session_id,
                    exc,
                    entry.on_busy,
                )
        return await self._ask(self.local, entry, mode, max_queued)

    async def _ask(
        self, leases: SessionLeases, entry: RunEntry, mode: LeaseMode, max_queued: int
    ) -> LeaseAnswer:
        touched = self._touched.setdefault(entry.run_id, [])
        if leases not in touched:
            touched.append(leases)
        return await leases.acquire_lease(
            entry.key, self.registry.node_id, entry.run_id, mode, max_queued
        )

    async def _unleased(self, entry: RunEntry, gone: set[str]) -> list[RunInfo]:
        """Active runs of the session that hold no lease (started under allow)."""
        local = [
            e.info()
            for e in self.registry.entries_here(entry.key)
            if e is not entry
            and not (e.queued or e.ended or e.finished.is_set())
            and e.on_busy in (None, "allow")
        ]
        try:
            remote = await self.registry.backend.list_remote(entry.key)
        except BackendUnavailable:
            remote = []
        return local + [
            r
            for r in remote
            if r.status != "queued" and r.on_busy in (None, "allow") and r.run_id not in gone
        ]

    async def _replace(self, entry: RunEntry, policy: OnBusy, gone: set[str]) -> bool:
        """Cancel the session's active runs, waiting until they have stopped (and, under
        rollback, been rolled back); whether any did (one on a worker that is gone or does
        not answer has not: its lease lapses in its own time)."""
        order = CancelOrder(
            entry.key,
            reason=f"replaced by a newer run of this session (on_busy={policy})",
            cause="busy",
            action="rollback" if policy == "rollback" else "interrupt",
            timeout_s=self.registry.default_timeout_s(),
        )
        # Not cut short if this run is cancelled meanwhile: the cancel has gone out, and its
        # wait is bounded by the order's timeout.
        runs, _ = await self.registry.cancel_everywhere(order)
        replaced = list(entry.replaced)
        known = {r.run_id: i for i, r in enumerate(replaced)}
        for run in runs:
            if run.stopped_by == "finished":
                continue  # its answer was complete: nothing was replaced
            if run.run_id in known:
                replaced[known[run.run_id]] = run
            else:
                replaced.append(run)
        entry.replaced = tuple(replaced)
        stopped = {run.run_id for run in runs if run.stopped}
        gone |= stopped
        return bool(stopped)

    async def _wait(self, entry: RunEntry, event: anyio.Event) -> None:
        poll = getattr(self.registry.backend, "lease_poll_s", None)
        with anyio.move_on_after(poll if poll else RECHECK_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_scope_on, event, tg.cancel_scope)
                tg.start_soon(_cancel_scope_on, entry.cancel_requested, tg.cancel_scope)

    async def _refusal(self, entry: RunEntry, status: int) -> Refusal:
        key, policy = entry.key, entry.on_busy or "reject"
        runs: list[RunInfo] = []
        for attempt in range(LISTING_TRIES):
            listed, _ = await self.registry.runs_everywhere(key)
            runs = [r for r in listed if r.run_id != entry.run_id]
            if runs or attempt == LISTING_TRIES - 1:
                break
            await anyio.sleep(0.01 * (attempt + 1))
        where = f"session {key.session_id!r} of user {key.user_id!r} in app {key.app_name!r}"
        if status == 429:
            detail = (
                f"The queue of {where} is full ({self.registry.options.max_queued} runs wait "
                "already, max_queued): send the run again once one has started."
            )
        else:
            detail = (
                f"The {where} already has an active run (on_busy=reject): nothing was "
                "started. Send the run again once it has ended, cancel it (POST "
                ".../sessions/{id}:cancel), or send with X-ADK-On-Busy: interrupt or enqueue."
            )
        return Refusal(status, BusyResponse(detail=detail, on_busy=policy, runs=runs))

    # -- giving the session back -----------------------------------------------------------

    def holds(self, entry: RunEntry) -> bool:
        """Whether ``entry`` holds (or waits for) a lease that it must give back."""
        return entry.run_id in self._touched

    async def release(self, entry: RunEntry) -> None:
        """Give the run's session back (and leave its queue). Bounded and shielded: a run
        that is being cancelled still gives it back; one that cannot lapses by itself."""
        touched = self._touched.pop(entry.run_id, None)
        if touched is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_S):
            for leases in touched:
                try:
                    await leases.release_lease(entry.key, self.registry.node_id, entry.run_id)
                except BackendUnavailable as exc:
                    logger.debug("adk-cancel: run %s kept its lease: %s", entry.run_id, exc)
        self._notify(entry.key)

    def http_send(self, entry: RunEntry, send: Send) -> Send:
        """``send`` for a run's client, under its policy: names the replaced runs in the
        response's headers, and gives the session back just before the last body message of
        a run that ended on its own, so its client's next message finds the session free."""
        if entry.on_busy is None or entry.on_busy == "allow":
            # Nothing replaced, no lease to give back: no wrapper on every streamed event.
            return send

        async def send_busy(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start" and entry.replaced:
                replaced = (REPLACED_HEADER, replaced_json(entry).encode())
                message = {**message, "headers": [*message.get("headers", []), replaced]}
            elif (
                kind == "http.response.body"
                and not message.get("more_body", False)
                and entry.cancel_order is None
                and self.holds(entry)
            ):
                entry.ended = True  # the answer is complete: a cancel from now on is too late
                await self.release(entry)
            await send(message)

        return send_busy

    # -- wake-ups --------------------------------------------------------------------------

    def _event(self, key: SessionKey) -> anyio.Event:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = anyio.Event()
        return event

    def _notify(self, key: SessionKey) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()


async def _cancel_scope_on(event: Any, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
