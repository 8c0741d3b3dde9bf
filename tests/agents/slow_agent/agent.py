"""The slow sample agent (``samples/slow_agent``) with an observed tool: tests see when it
starts, finishes or is cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.tools.tool_context import ToolContext
from observations import observe

from adk_cancel.testing import ScriptedLlm


async def slow_lookup(seconds: float, tool_context: ToolContext) -> dict[str, Any]:
    """Looks something up slowly.

    Args:
      seconds: How long the lookup takes.
    """
    session_id = tool_context.session.id
    observe("tool_started", session_id=session_id, seconds=seconds)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        observe("tool_cancelled", session_id=session_id)
        raise
    observe("tool_finished", session_id=session_id)
    return {"result": f"looked it up in {seconds:g} s"}


root_agent = LlmAgent(
    name="slow_agent",
    model=ScriptedLlm(),
    instruction="You look things up slowly.",
    tools=[slow_lookup],
)
