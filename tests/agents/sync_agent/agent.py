"""An agent whose sync tool waits on ``adk_cancel.tools.run_abort`` in ADK's tool thread pool
(turned on for each run by a callback, as a deployment would through ``RunConfig``)."""

from __future__ import annotations

import threading
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.agents.callback_context import CallbackContext
from google.adk.agents.run_config import ToolThreadPoolConfig
from google.adk.tools.tool_context import ToolContext
from observations import observe

from adk_cancel.testing import ScriptedLlm
from adk_cancel.tools import run_abort


def slow_lookup(seconds: float, tool_context: ToolContext) -> dict[str, Any]:
    """Looks something up slowly, in a thread.

    Args:
      seconds: How long the lookup takes.
    """
    session_id = tool_context.session.id
    observe("tool_started", session_id=session_id, thread=threading.current_thread().name)
    with run_abort(tool_context) as abort:
        aborted = abort.wait(seconds)
    observe("tool_woke", session_id=session_id, aborted=aborted)
    return {"result": "aborted" if aborted else f"looked it up in {seconds:g} s"}


def use_tool_threads(callback_context: CallbackContext) -> None:
    # ADK's API server builds each run's RunConfig itself: switch the thread pool on here.
    run_config = callback_context._invocation_context.run_config
    if run_config is not None and run_config.tool_thread_pool_config is None:
        run_config.tool_thread_pool_config = ToolThreadPoolConfig()


root_agent = LlmAgent(
    name="sync_agent",
    model=ScriptedLlm(),
    instruction="You look things up in threads.",
    tools=[slow_lookup],
    before_agent_callback=use_tool_threads,
)
