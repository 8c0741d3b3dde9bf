"""The slow sample agent with a tool that swallows the first cancellation: only force stops it."""

from __future__ import annotations

import asyncio
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.tools.tool_context import ToolContext
from observations import observe

from adk_cancel.testing import ScriptedLlm


async def slow_lookup(seconds: float, tool_context: ToolContext) -> dict[str, Any]:
    """Looks something up slowly and ignores the first request to stop.

    Args:
      seconds: How long the lookup takes.
    """
    session_id = tool_context.session.id
    observe("tool_started", session_id=session_id, seconds=seconds)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        observe("tool_ignored_cancel", session_id=session_id)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        observe("tool_cancelled", session_id=session_id)
        raise
    return {"result": "done"}


root_agent = LlmAgent(
    name="stubborn_agent", model=ScriptedLlm(), instruction="Be stubborn.", tools=[slow_lookup]
)
