"""The ADK plugin that hands each run's InvocationContext to the middleware's registry entry."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from google.adk.plugins.base_plugin import BasePlugin

from . import _metrics
from ._abort_source import bind_abort_source
from ._deadline import note_event
from ._partial import on_run_event
from ._registry import current_run
from ._rollback import remember_state
from .adk.invocation import invocation_of

if TYPE_CHECKING:
    from google.adk.agents.callback_context import CallbackContext
    from google.adk.agents.invocation_context import InvocationContext
    from google.adk.events.event import Event
    from google.adk.models.llm_request import LlmRequest
    from google.adk.models.llm_response import LlmResponse
    from google.genai import types

PLUGIN_NAME = "adk_cancel"


class CancelPlugin(BasePlugin):
    """Attaches a run's invocation context (its ``abort()``, invocation id and session
    service) to the registry entry that the middleware opened for the request.

    It also binds each model call to its invocation's abort flag (see ``_abort_source``).
    It keeps no state of its own, so one instance serves every app and runner. Clean-up
    lives in the middleware's ``finally``: ADK skips ``after_run_callback`` when a run's
    task is cancelled.
    """

    def __init__(self, name: str = PLUGIN_NAME) -> None:
        super().__init__(name=name)

    async def on_user_message_callback(
        self, *, invocation_context: InvocationContext, user_message: types.Content
    ) -> types.Content | None:
        # ADK 2.13 writes the user's message to the session before before_run_callback: a
        # cancel that lands during that write must already find the run abortable.
        _attach(invocation_context)
        return None

    async def before_run_callback(
        self, *, invocation_context: InvocationContext
    ) -> types.Content | None:
        _attach(invocation_context)  # a run without a new message starts here
        return None

    async def before_model_callback(
        self, *, callback_context: CallbackContext, llm_request: LlmRequest
    ) -> LlmResponse | None:
        # The model call runs next in this task: a model that watches the abort source
        # (MlxLlm does, after every token) stops on the abort itself, a loop turn before
        # ADK gets round to cancelling its task.
        # The invocation, not the callback context: what is bound lives as long as the
        # run's task, and the context (with its state delta) would be kept alive by it.
        bind_abort_source(invocation_of(callback_context))
        return None

    async def on_event_callback(
        self, *, invocation_context: InvocationContext, event: Event
    ) -> Event | None:
        # Every event ADK yields for the run, partial text included, passes here before ADK
        # stores it, its abort seal included: the idle deadline's clock (one clock read, and
        # only for a run that has an idle limit), and the text the run had streamed, kept
        # just before the seal (see _partial.py).
        entry = current_run.get()
        if entry is None:
            return None
        note_event(entry)
        if entry.invocation_context is invocation_context and (
            entry.route == "run" or event.error_code is not None
        ):
            await on_run_event(entry, invocation_context, event)
        return None

    async def on_run_error_callback(
        self, *, invocation_context: InvocationContext, error: Exception
    ) -> None:
        # /run_sse reports the error in its stream and returns normally: the record of a
        # failed run learns why here.
        entry = current_run.get()
        if entry is not None and entry.error is None:
            entry.error = f"{type(error).__name__}: {error}"


def _attach(invocation_context: InvocationContext) -> None:
    entry = current_run.get()
    # Nested runners (AgentTool) call this again inside the same run: keep the first,
    # outermost invocation, which is the one a cancel must abort.
    if entry is not None and entry.invocation_context is None:
        # ADK's invocation span is current here: a cancel adds its events to it.
        _metrics.invocation_span(entry)
        entry.attach(invocation_context, asyncio.current_task())
        remember_state(entry, invocation_context)  # before ADK stores the message


CANCEL_PLUGIN = CancelPlugin()
"""Module-level instance for ADK's ``extra_plugins=["adk_cancel.CANCEL_PLUGIN"]``."""
