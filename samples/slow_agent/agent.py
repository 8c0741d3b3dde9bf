"""A deterministic slow agent that needs no API key: the thing to cancel.

Its model (``adk_cancel.testing.ScriptedLlm``) streams a sentence word by word, then calls
``slow_lookup``, an async tool that waits (30 s by default), then answers. Like Gemini, the
model refuses a history with a function call that has no response, so a session a cancel left
broken fails its next turn. The first word of the message picks the script: ``quick``,
``words N``, ``fast N``, ``tool S`` (see ``ScriptedLlm``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.tools.tool_context import ToolContext

from adk_cancel.testing import ScriptedLlm

logger = logging.getLogger(__name__)


async def slow_lookup(seconds: float, tool_context: ToolContext) -> dict[str, Any]:
    """Looks something up slowly.

    Args:
      seconds: How long the lookup takes.
    """
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        # A cancel reaches an async tool as a cancellation of its task.
        logger.info("slow_lookup in session %s was cancelled", tool_context.session.id)
        raise
    return {"result": f"looked it up in {seconds:g} s"}


root_agent = LlmAgent(
    name="slow_agent",
    model=ScriptedLlm(),
    instruction="You look things up slowly.",
    tools=[slow_lookup],
)
