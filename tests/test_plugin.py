"""CancelPlugin binds each model call to its invocation's abort flag (``_abort_source``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import pytest
from google.adk.agents import LlmAgent
from google.adk.apps import App
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.genai import types
from pydantic import Field

from adk_cancel import CancelPlugin, current_abort_probe

pytestmark = pytest.mark.timeout(30)


class _ProbingLlm(BaseLlm):
    """Hands the abort probe it finds at call time to the test, then waits to be stopped."""

    model: str = "probing"
    probes: list[Callable[[], bool] | None] = Field(default_factory=list)
    called: asyncio.Event | None = None

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self.probes.append(current_abort_probe())
        assert self.called is not None
        self.called.set()
        await asyncio.sleep(30)
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="late")]))


async def _run_until_model_called(
    plugins: list[CancelPlugin],
) -> tuple[_ProbingLlm, asyncio.Event, asyncio.Task[None]]:
    llm = _ProbingLlm(probes=[], called=asyncio.Event())
    sessions = InMemorySessionService()  # type: ignore[no-untyped-call]
    runner = Runner(
        app=App(name="app", root_agent=LlmAgent(name="a", model=llm), plugins=plugins),
        session_service=sessions,
    )
    session = await sessions.create_session(app_name="app", user_id="u")
    abort = asyncio.Event()

    async def run() -> None:
        message = types.Content(role="user", parts=[types.Part(text="hi")])
        async for _ in runner.run_async(
            user_id="u", session_id=session.id, new_message=message, abort_signal=abort
        ):
            pass

    task = asyncio.create_task(run())
    assert llm.called is not None
    await asyncio.wait_for(llm.called.wait(), 10)
    return llm, abort, task


async def test_model_call_sees_its_invocation_abort() -> None:
    llm, abort, task = await _run_until_model_called([CancelPlugin()])
    try:
        [probe] = llm.probes
        assert probe is not None and probe() is False
        abort.set()
        # Seen at once, from any thread: no loop turn needed, unlike a task cancel.
        assert probe() is True
        await asyncio.to_thread(lambda: None)
        assert probe() is True
    finally:
        await asyncio.wait_for(task, 10)


async def test_without_the_plugin_nothing_is_bound() -> None:
    llm, abort, task = await _run_until_model_called([])
    abort.set()
    await asyncio.wait_for(task, 10)
    assert llm.probes == [None]
