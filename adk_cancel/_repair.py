"""Answer the function calls that a forced cancel left without a response.

A cooperative abort lets ADK seal the invocation itself. A forced task cancel does not, and
ADK never seals live runs; a function call without a response then makes the next turn fail
on models that reject unanswered calls (Gemini does). The events written here have ADK's own
seal shape (``error_code="INVOCATION_ABORTED"``) so ADK's resume and routing logic read them
as a seal.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from google.adk.events.event import Event
from google.genai import types

if TYPE_CHECKING:
    from google.adk.sessions.base_session_service import BaseSessionService

    from ._models import SessionKey

logger = logging.getLogger("adk_cancel")

ABORTED_CODE = "INVOCATION_ABORTED"


def dangling_calls(
    events: list[Event], invocation_id: str
) -> dict[tuple[str, str | None], list[types.FunctionCall]]:
    """The invocation's function calls with no response, grouped by (author, branch)."""
    own = [e for e in events if e.invocation_id == invocation_id]
    answered = {fr.id for e in own for fr in e.get_function_responses() if fr.id}
    grouped: dict[tuple[str, str | None], list[types.FunctionCall]] = defaultdict(list)
    for event in own:
        for call in event.get_function_calls():
            if call.id and call.id not in answered:
                grouped[(event.author, event.branch)].append(call)
    return grouped


async def repair_session(
    session_service: BaseSessionService,
    key: SessionKey,
    invocation_id: str,
    reason: str,
) -> bool:
    """Append an error response for each unanswered call; True if anything was written."""
    session = await session_service.get_session(
        app_name=key.app_name, user_id=key.user_id, session_id=key.session_id
    )
    if session is None:
        return False
    grouped = dangling_calls(session.events, invocation_id)
    message = f"Run cancelled by adk-cancel: {reason}"
    for (author, branch), calls in grouped.items():
        event = Event(
            invocation_id=invocation_id,
            author=author,
            branch=branch,
            error_code=ABORTED_CODE,
            error_message=message,
            content=types.Content(
                role="user",
                parts=[
                    types.Part(
                        function_response=types.FunctionResponse(
                            id=call.id, name=call.name, response={"error": message}
                        )
                    )
                    for call in calls
                ],
            ),
        )
        await session_service.append_event(session, event)
    if grouped:
        logger.info(
            "Repaired session %s: answered %d function call(s) of invocation %s",
            key.session_id,
            sum(len(c) for c in grouped.values()),
            invocation_id,
        )
    return bool(grouped)


async def invocation_events(
    session_service: BaseSessionService, key: SessionKey, invocation_id: str
) -> list[Event]:
    session = await session_service.get_session(
        app_name=key.app_name, user_id=key.user_id, session_id=key.session_id
    )
    if session is None:
        return []
    return [e for e in session.events if e.invocation_id == invocation_id]
