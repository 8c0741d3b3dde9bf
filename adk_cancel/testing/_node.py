"""A small real ``LocalNode``: each run is a task that stops when it is told to abort.

For testing a ``CancelBackend`` (adk-cancel's own, or yours) without an ADK server: connect
two nodes, each through its own backend instance, start runs on one and list or cancel them
through the other.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .._models import CancelledRun, RunInfo, SessionKey
from .._order import CancelOrder
from .._stream import RunStream
from ..backends import CancelBackend


@dataclass(eq=False)
class _Run:
    info: RunInfo
    task: asyncio.Task[None] | None = None
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    stopped_by: str | None = None
    stop_ms: float | None = None
    cancel_at: float | None = None


class SimpleNode:
    """A minimal registry: each run is a task waiting for its abort (or for ``stop_delay_s``
    more after it, or ignoring it when ``stubborn``). Like the core's registry, it announces
    runs when they start and withdraws them when they end."""

    def __init__(self, backend: CancelBackend, node_id: str | None = None) -> None:
        self.backend = backend
        self._node_id = node_id or f"test-node-{uuid.uuid4().hex[:8]}"
        self.runs: dict[str, _Run] = {}
        self.cancel_calls: list[dict[str, Any]] = []

    @property
    def node_id(self) -> str:
        return self._node_id

    def runs_here(self, key: SessionKey) -> list[RunInfo]:
        return [r.info for r in self.runs.values() if _key(r.info) == key]

    def all_runs_here(self) -> list[RunInfo]:
        return [r.info for r in self.runs.values()]

    def streams_here(self) -> list[RunStream]:
        return []  # its runs stream nothing

    def start_run(
        self,
        key: SessionKey,
        *,
        invocation_id: str | None = None,
        stop_delay_s: float = 0.0,
        stubborn: bool = False,
    ) -> RunInfo:
        info = RunInfo(
            run_id=uuid.uuid4().hex,
            app_name=key.app_name,
            user_id=key.user_id,
            session_id=key.session_id,
            invocation_id=invocation_id,
            route="run",
            started_at=time.time(),
            worker=self.node_id,
        )
        run = _Run(info)
        run.task = asyncio.create_task(self._body(run, stop_delay_s, stubborn))
        self.runs[info.run_id] = run
        self.backend.announce(info)
        return info

    async def _body(self, run: _Run, stop_delay_s: float, stubborn: bool) -> None:
        try:
            await run.abort.wait()
            if stubborn:
                await asyncio.sleep(3600)
            await asyncio.sleep(stop_delay_s)
            run.stopped_by = "abort"
        finally:
            if run.cancel_at is not None:
                run.stop_ms = (time.monotonic() - run.cancel_at) * 1000
            self.runs.pop(run.info.run_id, None)
            self.backend.withdraw(run.info)

    def is_running(self, run_id: str) -> bool:
        return run_id in self.runs

    async def cancel_here(self, order: CancelOrder) -> list[CancelledRun]:
        self.cancel_calls.append(
            {
                "key": order.key,
                "invocation_id": order.invocation_id,
                "reason": order.reason,
                "wait": order.wait,
            }
        )
        chosen = [
            r
            for r in self.runs.values()
            if order.covers(_key(r.info)) and order.matches(r.info.invocation_id, r.info.run_id)
        ]
        for run in chosen:
            if run.cancel_at is None:
                run.cancel_at = time.monotonic()
                run.info = run.info.model_copy(update={"cancelling": True})
                self.backend.announce(run.info)
            run.abort.set()
        tasks = [r.task for r in chosen if r.task is not None]
        if order.wait and tasks:
            await asyncio.wait(tasks, timeout=order.timeout_s)
        return [
            CancelledRun(
                run_id=r.info.run_id,
                session_id=r.info.session_id,
                invocation_id=r.info.invocation_id,
                route=r.info.route,
                worker=self.node_id,
                stopped=r.task is not None and r.task.done(),
                stopped_by="abort" if r.task is not None and r.task.done() else None,
                stop_ms=r.stop_ms,
            )
            for r in chosen
        ]

    async def close(self) -> None:
        tasks = [r.task for r in self.runs.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _key(info: RunInfo) -> SessionKey:
    return SessionKey(info.app_name, info.user_id, info.session_id)
