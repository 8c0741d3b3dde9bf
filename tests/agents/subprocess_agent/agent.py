"""An agent whose tool runs a job in subprocesses (a shell and two ``sleep``), through
``adk_cancel.tools.subprocess_shell``: a cancel must leave no process of the job's group."""

from __future__ import annotations

import asyncio
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.tools.tool_context import ToolContext
from observations import observe

from adk_cancel.testing import ScriptedLlm
from adk_cancel.tools import subprocess_shell


async def run_job(seconds: float, tool_context: ToolContext) -> dict[str, Any]:
    """Runs a job that takes a while.

    Args:
      seconds: How long the job runs.
    """
    session_id = tool_context.session.id
    script = f"sleep {seconds:g} & sleep {seconds:g}; wait"
    async with subprocess_shell(script, tool_context=tool_context, grace_s=1.0) as job:
        observe("job_started", session_id=session_id, pgid=job.pgid)
        try:
            await job.wait()
        except asyncio.CancelledError:
            observe("tool_cancelled", session_id=session_id, pgid=job.pgid)
            raise
    observe("tool_finished", session_id=session_id)
    return {"exit": job.returncode}


root_agent = LlmAgent(
    name="subprocess_agent",
    model=ScriptedLlm(tool_name="run_job"),
    instruction="You run jobs.",
    tools=[run_job],
)
