"""Reading a cancelled session back and answering what the run left open, against stores
that fail the way shared stores do."""

from __future__ import annotations

from typing import Any

import pytest
from google.adk.errors import StaleSessionError
from google.adk.events.event import Event
from google.adk.sessions import InMemorySessionService
from google.genai import types

from adk_cancel import RepairFailed, SessionKey, repair_session
from adk_cancel.testing import unanswered_calls

pytestmark = pytest.mark.timeout(30)

KEY = SessionKey("app", "u", "s")


class _Store(InMemorySessionService):
    """An in-memory store whose next ``fail`` seal writes raise ``StaleSessionError``, and
    which can drop a write that it reports as done (a write lost under a race)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.fail = 0
        self.lose = 0
        self.seal_writes = 0

    async def append_event(self, session: Any, event: Event) -> Event:
        if event.error_code == "INVOCATION_ABORTED":
            self.seal_writes += 1
            if self.fail:
                self.fail -= 1
                raise StaleSessionError("modified by another writer")
            if self.lose:
                self.lose -= 1
                return event
        return await super().append_event(session, event)


async def _session_with_open_call(store: _Store) -> None:
    session = await store.create_session(app_name="app", user_id="u", session_id="s")
    call = types.FunctionCall(id="call-1", name="slow_lookup", args={"seconds": 30})
    await store.append_event(
        session,
        Event(
            invocation_id="inv",
            author="agent",
            content=types.Content(role="model", parts=[types.Part(function_call=call)]),
        ),
    )


async def _unanswered(store: _Store) -> list[Any]:
    session = await store.get_session(app_name="app", user_id="u", session_id="s")
    assert session is not None
    return unanswered_calls(session.events)


async def test_an_open_call_is_answered_in_adks_seal_shape() -> None:
    store = _Store()
    await _session_with_open_call(store)
    assert await repair_session(store, KEY, "inv", "user pressed stop") is True
    assert await _unanswered(store) == []
    session = await store.get_session(app_name="app", user_id="u", session_id="s")
    assert session is not None
    seal = session.events[-1]
    assert seal.error_code == "INVOCATION_ABORTED" and seal.author == "agent"
    [response] = seal.get_function_responses()
    assert response.id == "call-1" and "user pressed stop" in str(response.response)
    # Nothing left open: a second pass writes nothing.
    assert await repair_session(store, KEY, "inv", "again") is False


async def test_stale_writes_are_retried_on_a_fresh_read() -> None:
    store = _Store()
    await _session_with_open_call(store)
    store.fail = 3
    assert await repair_session(store, KEY, "inv", "stop") is True
    assert store.fail == 0 and await _unanswered(store) == []


async def test_a_write_the_store_lost_is_caught_by_reading_back() -> None:
    store = _Store()
    await _session_with_open_call(store)
    store.lose = 1
    assert await repair_session(store, KEY, "inv", "stop") is True
    assert store.seal_writes == 2 and await _unanswered(store) == []


async def test_a_store_that_keeps_refusing_is_reported_with_its_cause() -> None:
    store = _Store()
    await _session_with_open_call(store)
    store.fail = 10**6
    with pytest.raises(RepairFailed, match="still has unanswered function calls") as info:
        await repair_session(store, KEY, "inv", "stop")
    assert isinstance(info.value.__cause__, StaleSessionError)
    assert store.seal_writes == 6  # bounded: one write per attempt


async def test_a_deleted_session_needs_no_repair() -> None:
    assert await repair_session(_Store(), KEY, "inv", "stop") is False


async def test_without_an_invocation_id_every_open_call_is_answered() -> None:
    store = _Store()
    await _session_with_open_call(store)
    session = await store.get_session(app_name="app", user_id="u", session_id="s")
    assert session is not None
    call = types.FunctionCall(id="call-2", name="slow_lookup", args={})
    await store.append_event(
        session,
        Event(
            invocation_id="other",
            author="agent",
            content=types.Content(role="model", parts=[types.Part(function_call=call)]),
        ),
    )
    assert len(await _unanswered(store)) == 2
    assert await repair_session(store, KEY, None, "the worker died") is True
    assert await _unanswered(store) == []
