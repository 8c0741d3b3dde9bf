"""Run deadlines: a limit on a run's length, and on how long it may go without an event.

Each run gets its limits when it is registered: the request's ``X-ADK-Run-Timeout`` /
``X-ADK-Idle-Timeout`` header (seconds), else the server's ``run_timeout_s`` /
``idle_timeout_s``, each capped by ``max_run_timeout_s`` / ``max_idle_timeout_s``. A watcher
in the run's task group sleeps until the nearer limit (anyio's clock, the event loop's), and
when one passes cancels the run exactly like a ``:cancel`` (abort, grace, force, repair), with
``cause="deadline"`` and the reason ``deadline exceeded after 30 s`` or ``no event for 10 s``;
the run's record says ``timed_out``.

"An event" is one ADK yields for the run (the plugin's ``on_event_callback``: partial text,
tool calls, results), so a ``/run``, which sends its client nothing until the end, is not
idle while it works; on ``/run_live`` a message from the client counts too. Noting an event
costs one clock read, and only when an idle limit is set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from ._options import CancelOptions
from ._order import CancelOrder

if TYPE_CHECKING:
    from ._registry import RunEntry

RUN_TIMEOUT_HEADER = "x-adk-run-timeout"
IDLE_TIMEOUT_HEADER = "x-adk-idle-timeout"
_HEADERS = {RUN_TIMEOUT_HEADER.encode(): "run", IDLE_TIMEOUT_HEADER.encode(): "idle"}


class BadDeadline(ValueError):
    """A deadline header that is not a number of seconds > 0 (answered 422)."""


@dataclass(frozen=True, slots=True)
class Deadlines:
    """One run's limits, in seconds (None: none)."""

    run_s: float | None = None
    idle_s: float | None = None

    def __bool__(self) -> bool:
        return self.run_s is not None or self.idle_s is not None


def _seconds(header: str, raw: bytes) -> float:
    text = raw.decode("latin-1").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise BadDeadline(
            f"The {header} header must be a number of seconds > 0 (such as 30 or 2.5), "
            f"got {shown!r}"
        )
    return value


def _capped(value: float | None, cap: float | None) -> float | None:
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


def deadlines_for(headers: Iterable[tuple[bytes, bytes]], options: CancelOptions) -> Deadlines:
    """A run's limits from its request's headers and the server's options; raises
    ``BadDeadline`` for a header that is not a number of seconds > 0."""
    asked: dict[str, float] = {}
    for name, raw in headers:
        kind = _HEADERS.get(name.lower())
        if kind is not None:
            asked[kind] = _seconds(name.decode("latin-1"), raw)
    return Deadlines(
        run_s=_capped(asked.get("run", options.run_timeout_s), options.max_run_timeout_s),
        idle_s=_capped(asked.get("idle", options.idle_timeout_s), options.max_idle_timeout_s),
    )


def note_event(entry: RunEntry) -> None:
    """The run produced an event (or, live, its client spoke): its idle limit starts again."""
    if entry.idle_watch:
        entry.last_event_mono = time.monotonic()


def run_reason(seconds: float) -> str:
    return f"deadline exceeded after {seconds:g} s"


def idle_reason(seconds: float) -> str:
    return f"no event for {seconds:g} s"


def prepare(entry: RunEntry, deadlines: Deadlines) -> None:
    """Before the run starts: make its events count for the idle limit."""
    if deadlines.idle_s is not None:
        entry.last_event_mono = entry.started_mono
        entry.idle_watch = True


async def watch(entry: RunEntry, deadlines: Deadlines) -> None:
    """Sleep until a limit passes, then cancel the run; returns at once if something else
    cancelled it first. Runs in the run's task group, which cancels it when the run ends."""
    run_at = entry.started_mono + deadlines.run_s if deadlines.run_s is not None else math.inf
    while entry.cancel_order is None:
        idle_at = (
            entry.last_event_mono + deadlines.idle_s if deadlines.idle_s is not None else math.inf
        )
        now = time.monotonic()
        if now >= run_at:
            assert deadlines.run_s is not None
            reason = run_reason(deadlines.run_s)
        elif now >= idle_at:
            assert deadlines.idle_s is not None
            reason = idle_reason(deadlines.idle_s)
        else:
            # An event meanwhile moves idle_at on: sleep again from the new one.
            await anyio.sleep(min(run_at, idle_at) - now)
            continue
        entry.request_cancel(
            CancelOrder(
                entry.key,
                reason,
                cause="deadline",
                timeout_s=entry.registry.default_timeout_s(),
            )
        )
        return
