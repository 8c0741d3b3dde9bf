"""An agent whose model fails at once: what a broken model (a missing local model, a revoked
API key) looks like to a client."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from google.adk.agents import LlmAgent
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse

from adk_cancel.testing import ScriptedLlm


class FailingLlm(ScriptedLlm):
    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        raise LookupError("model 'mlx/nope' is not prepared: run adk-cancel models prepare")
        yield  # an async generator, as ADK expects


root_agent = LlmAgent(name="failing_agent", model=FailingLlm(), instruction="Fail.")
