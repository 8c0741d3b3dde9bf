"""A live agent whose model connection fails as it is torn down (the way a send to a gone
client, or a stale session write, fails inside ADK's live tasks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from google.adk.agents import LlmAgent
from google.adk.models.base_llm_connection import BaseLlmConnection
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types

from adk_cancel.testing import ScriptedLlm


class _FaultyConnection(BaseLlmConnection):
    async def send_history(self, history: list[types.Content]) -> None:
        return None

    async def send_content(self, content: types.Content) -> None:
        return None

    async def send_realtime(self, blob: types.Blob) -> None:
        return None

    async def receive(self) -> AsyncGenerator[LlmResponse, None]:
        yield LlmResponse(content=types.ModelContent(parts=[types.Part(text="Listening.")]))
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionResetError("the model connection broke while closing") from None

    async def close(self) -> None:
        return None


class FaultyLiveLlm(ScriptedLlm):
    @contextlib.asynccontextmanager
    async def connect(self, llm_request: LlmRequest) -> AsyncIterator[BaseLlmConnection]:
        yield _FaultyConnection()


root_agent = LlmAgent(name="faulty_live_agent", model=FaultyLiveLlm(), instruction="Listen.")
