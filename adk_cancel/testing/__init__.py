"""Tools for testing an ADK app that runs with adk-cancel (and for adk-cancel's own tests).

- :class:`ScriptedLlm`: a deterministic model that needs no API key, streams slowly and
  calls a slow tool, so there is something to cancel.
- :func:`serve` (an app in a thread), :class:`ServerProcess` (``adk-cancel api_server`` in a
  child process), :class:`RedisServer` (a throwaway ``redis-server``), :class:`PostgresServer`
  (a throwaway PostgreSQL cluster, for ADK's ``DatabaseSessionService``), :func:`free_port`.
- :class:`SimpleNode`: a minimal run registry, to test a ``CancelBackend`` without a server.
- :func:`run_body`, :func:`session_path`: request bodies and paths of ADK's API server.
- :func:`unanswered_calls`: the invariant a cancel must keep, read from stored events;
  :func:`wait_for_call`: until a session has stored a function call (a run waits in a tool).
- :func:`parse_sse` (:class:`SseEvent`): a stream's events as a client reads them;
  :func:`events_path`: the route that rejoins a run's stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from ._node import SimpleNode
from ._scripted import ScriptedLlm
from ._servers import PostgresServer, RedisServer, ServerProcess, free_port, serve
from ._sse import SseEvent, events_path, parse_sse

if TYPE_CHECKING:
    from google.adk.events.event import Event
    from google.genai import types

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ScriptedLlm",
    "ServerProcess",
    "SimpleNode",
    "SseEvent",
    "events_path",
    "free_port",
    "message",
    "parse_sse",
    "run_body",
    "serve",
    "session_path",
    "unanswered_calls",
    "wait_for_call",
]


def message(text: str) -> dict[str, Any]:
    """A user message as ADK's API server takes it."""
    return {"role": "user", "parts": [{"text": text}]}


def run_body(
    session_id: str, text: str, app: str = "slow_agent", user: str = "u", **extra: Any
) -> dict[str, Any]:
    """The JSON body of ``POST /run`` or ``/run_sse`` (``streaming=True`` as an extra)."""
    return {
        "appName": app,
        "userId": user,
        "sessionId": session_id,
        "newMessage": message(text),
        **extra,
    }


def session_path(session_id: str, app: str = "slow_agent", user: str = "u") -> str:
    """``/apps/{app}/users/{user}/sessions/{session_id}``; add ``:cancel`` or ``/runs``."""
    return f"/apps/{app}/users/{user}/sessions/{session_id}"


def unanswered_calls(events: Iterable[Event | dict[str, Any]]) -> list[types.FunctionCall]:
    """The function calls in a session's events that no function response answers.

    Takes ADK ``Event`` objects (from a session service) or their JSON form (from
    ``GET .../sessions/{id}``). After any cancelled run this must be empty: models such as
    Gemini reject a history with an unanswered call.
    """
    from google.adk.events.event import Event

    calls: dict[str, types.FunctionCall] = {}
    answered: set[str] = set()
    for raw in events:
        event = raw if isinstance(raw, Event) else Event.model_validate(raw)
        for call in event.get_function_calls():
            if call.id:
                calls[call.id] = call
        answered.update(r.id for r in event.get_function_responses() if r.id)
    return [call for call_id, call in calls.items() if call_id not in answered]


async def wait_for_call(
    client: httpx.AsyncClient,
    url: str,
    session_id: str,
    app: str = "slow_agent",
    user: str = "u",
    timeout_s: float = 10.0,
) -> None:
    """Poll ``GET .../sessions/{id}`` until the session has stored a function call: the
    model has asked for a tool, and the run waits in it. Raises ``TimeoutError``."""
    deadline = time.monotonic() + timeout_s
    path = url + session_path(session_id, app, user)
    while True:
        events = (await client.get(path)).json().get("events", [])
        if any("functionCall" in part for e in events for part in _parts(e)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {session_id} stored no function call in {timeout_s} s")
        await anyio.sleep(0.002)


def _parts(event: dict[str, Any]) -> list[dict[str, Any]]:
    return list((event.get("content") or {}).get("parts") or [])
