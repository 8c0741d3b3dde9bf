"""Reading Server-Sent Events as a client does: ``/run_sse`` and the rejoin route."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseEvent:
    """One event of an SSE stream."""

    data: str
    event: str = "message"
    id: int | None = None
    """The ``id:`` the event carried (adk-cancel's ids are whole numbers), if any."""

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(text: str) -> list[SseEvent]:
    """The events of an SSE stream's text, in order (comments and ``retry:`` skipped; an
    unfinished last event too, as a browser would)."""
    events: list[SseEvent] = []
    for block in text.replace("\r\n", "\n").split("\n\n")[:-1]:
        data: list[str] = []
        kind, event_id = "message", None
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id":
                event_id = int(value) if value.isdigit() else None
        if data:
            events.append(SseEvent("\n".join(data), kind, event_id))
    return events


def events_path(session_id: str, run_id: str, app: str = "slow_agent", user: str = "u") -> str:
    """``/apps/{app}/users/{user}/sessions/{session_id}/runs/{run_id}/events``: rejoin a run."""
    return f"/apps/{app}/users/{user}/sessions/{session_id}/runs/{run_id}/events"
