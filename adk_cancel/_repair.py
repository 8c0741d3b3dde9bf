"""Make sure a cancelled invocation left no function call without a response.

A cooperative abort lets ADK seal the invocation itself, but that seal is a write like any
other: on a database session service it can fail with ``StaleSessionError`` (another writer
touched the session, or a cancelled commit left ADK's session object behind the store), and
ADK then only logs it. A forced task cancel does not seal at all, and ADK never seals live
runs. So after every cancelled run the stored session is read back and each call still
unanswered gets an error response, in ADK's own seal shape (``error_code=
"INVOCATION_ABORTED"``) so ADK's resume and routing logic read it as a seal. A write that
fails is retried with a freshly read session, a bounded number of times.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import anyio
from google.adk.events.event import Event
from google.genai import types

if TYPE_CHECKING:
    from google.adk.sessions.base_session_service import BaseSessionService

    from ._models import SessionKey

logger = logging.getLogger("adk_cancel")

ABORTED_CODE = "INVOCATION_ABORTED"
RETRY_DELAYS_S = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)
"""Pauses before each read-and-repair attempt after a refused one: a stale write usually
succeeds at once on a fresh read; the later pauses let a concurrent writer on the same session
finish. The read that checks a successful write comes at once."""


class RepairFailed(RuntimeError):
    """The session still has unanswered function calls after every attempt to answer them."""


_Group = tuple[str, str, str | None]
"""(invocation id, author, branch): one seal event answers a group's calls."""


def dangling_calls(
    events: list[Event], invocation_id: str | None
) -> dict[_Group, list[types.FunctionCall]]:
    """The function calls with no response (of one invocation, or of all), grouped."""
    own = [e for e in events if invocation_id is None or e.invocation_id == invocation_id]
    answered = {fr.id for e in own for fr in e.get_function_responses() if fr.id}
    grouped: dict[_Group, list[types.FunctionCall]] = defaultdict(list)
    for event in own:
        for call in event.get_function_calls():
            if call.id and call.id not in answered:
                grouped[(event.invocation_id, event.author, event.branch)].append(call)
    return grouped


def _seal_events(grouped: dict[_Group, list[types.FunctionCall]], message: str) -> list[Event]:
    return [
        Event(
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
        for (invocation_id, author, branch), calls in grouped.items()
    ]


async def repair_session(
    session_service: BaseSessionService,
    key: SessionKey,
    invocation_id: str | None,
    reason: str,
) -> bool:
    """Read the session back until it has no unanswered function call (of
    ``invocation_id``, or of any invocation when it is None), answering each one found with
    an ``INVOCATION_ABORTED`` error response; True if anything was written.

    adk-cancel does this after every cancelled run. Call it yourself on the sessions of a
    worker that died mid-run (SIGKILL, OOM): nobody sealed those. Raises ``RepairFailed``
    (with the store's last error as its cause) when the store keeps refusing the write.
    """
    message = f"Run cancelled by adk-cancel: {reason}"
    wrote = 0
    last_error: Exception | None = None
    pause = False
    for delay in RETRY_DELAYS_S:
        if pause:
            await anyio.sleep(delay)
        pause = True
        try:
            session = await session_service.get_session(
                app_name=key.app_name, user_id=key.user_id, session_id=key.session_id
            )
            if session is None:
                return wrote > 0  # deleted meanwhile: nothing left to keep well-formed
            grouped = dangling_calls(session.events, invocation_id)
            if not grouped:
                if wrote:
                    logger.info(
                        "Repaired session %s: answered %d function call(s) of invocation %s",
                        key.session_id,
                        wrote,
                        invocation_id or "(any)",
                    )
                return wrote > 0
            for event in _seal_events(grouped, message):
                await session_service.append_event(session, event)
                wrote += len(event.get_function_responses())
            pause = False  # written: read it back at once (the pauses are for a refusal)
        except Exception as exc:
            # StaleSessionError and its kind: read the session afresh and try again.
            last_error = exc
            logger.debug("Repair of session %s failed; retrying", key.session_id, exc_info=True)
    raise RepairFailed(
        f"Session {key.session_id!r} still has unanswered function calls after "
        f"{len(RETRY_DELAYS_S)} attempts to answer them"
    ) from last_error
