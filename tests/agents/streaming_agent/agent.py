"""The recording agent with a model that streams even when the route does not ask it to:
on /run, whose client gets nothing until the end, the words exist only inside the run."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from google.adk.agents import LlmAgent
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from observations import observe
from recording_agent.agent import record_request, slow_lookup

from adk_cancel.testing import ScriptedLlm


class AlwaysStreaming(ScriptedLlm):
    """``ScriptedLlm`` streaming partial responses whatever the run config says."""

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        async for response in super().generate_content_async(llm_request, stream=True):
            if response.partial and response.content and response.content.parts:
                observe("model_chunk", text=response.content.parts[0].text)
            yield response


root_agent = LlmAgent(
    name="streaming_agent",
    model=AlwaysStreaming(),
    instruction="You look things up slowly.",
    tools=[slow_lookup],
    before_model_callback=record_request,
)
