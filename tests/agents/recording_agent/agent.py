"""The slow sample agent, recording what its model is asked and changing the session as it
goes: its tool bumps a state key and saves an artifact before it waits, so a rollback has
state and artifacts to undo, and a test can read every prompt the model got."""

from __future__ import annotations

import asyncio
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.agents.callback_context import CallbackContext
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.tools.tool_context import ToolContext
from google.genai import types
from observations import observe

from adk_cancel.testing import ScriptedLlm


async def slow_lookup(seconds: float, tool_context: ToolContext) -> dict[str, Any]:
    """Looks something up slowly, noting it in the session first.

    Args:
      seconds: How long the lookup takes.
    """
    session_id = tool_context.session.id
    lookups = int(tool_context.state.get("lookups", 0)) + 1
    tool_context.state["lookups"] = lookups
    await tool_context.save_artifact("lookup.txt", types.Part(text=f"lookup {lookups}"))
    observe("tool_started", session_id=session_id, seconds=seconds)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        observe("tool_cancelled", session_id=session_id)
        raise
    observe("tool_finished", session_id=session_id)
    return {"result": f"looked it up in {seconds:g} s"}


def record_request(
    callback_context: CallbackContext, llm_request: LlmRequest
) -> LlmResponse | None:
    """Every prompt, as (role, text) pairs: what the model is told of the conversation."""
    contents = [
        {
            "role": content.role,
            "text": "".join(p.text or "" for p in content.parts or []),
            "calls": [p.function_call.name for p in content.parts or [] if p.function_call],
            "responses": [
                p.function_response.name for p in content.parts or [] if p.function_response
            ],
        }
        for content in llm_request.contents
    ]
    observe("model_request", session_id=callback_context.session.id, contents=contents)
    return None


root_agent = LlmAgent(
    name="recording_agent",
    model=ScriptedLlm(),
    instruction="You look things up slowly.",
    tools=[slow_lookup],
    before_model_callback=record_request,
)
