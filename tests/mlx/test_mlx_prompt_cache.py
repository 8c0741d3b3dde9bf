"""The prompt cache: a new turn reads only its new tokens, and answers stay the same.

Turns go through a real ADK ``Runner``, so the prompts are what ADK renders from the
session it stored (the cache matches on token ids, whatever the session holds). Answers
that later prompts build on are scripted (their tokens are exactly the script's, so the
history renders back to the same ids); answers compared with and without the cache are
greedy and unforced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from google.adk.agents import LlmAgent
from google.adk.agents.run_config import RunConfig, StreamingMode
from google.adk.apps import App
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.genai import types

import adk_cancel
import adk_cancel.mlx as amlx
from adk_cancel.mlx.testing import TINY_MODEL, scripted_output

pytestmark = pytest.mark.timeout(90)

USAGE: list[types.GenerateContentResponseUsageMetadata] = []
"""Usage of each final model response in ``_chat``, as ADK received it."""


class Greedy:
    """Logits processors: no end of turn; records the tokens generated (all but the last)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def __call__(self, tokenizer: Any) -> Sequence[Any]:
        (forbid_eos,) = scripted_output(None)(tokenizer)
        prompt_len: int | None = None

        def processor(tokens: Any, logits: Any) -> Any:
            nonlocal prompt_len
            prompt_len = prompt_len or int(tokens.shape[0])
            self.tokens = [int(t) for t in tokens.tolist()[prompt_len:]]
            return forbid_eos(tokens, logits)

        return [processor]


class Turns:
    """A logits-processor factory whose n-th call says ``plan[n]`` (a script or a Greedy)."""

    def __init__(self, *plan: str | Greedy) -> None:
        self._plan: Iterator[str | Greedy] = iter(plan)

    def __call__(self, tokenizer: Any) -> Sequence[Any]:
        step = next(self._plan)
        return step(tokenizer) if isinstance(step, Greedy) else scripted_output(step)(tokenizer)


@pytest.fixture
def cache(worker: amlx.MlxWorker) -> Iterator[Any]:
    """The tiny model's prompt cache, emptied; the serving options restored afterwards."""
    before = worker.options

    def get(w: amlx.MlxWorker) -> Any:
        c = w.loaded(TINY_MODEL).engine.prompt_cache
        c.clear()
        return c

    yield worker.call(get).result(timeout=30)
    amlx.configure(**vars(before))


def _stats_since(worker: amlx.MlxWorker, first_id: int) -> list[amlx.JobStats]:
    return [s for s in worker.history if s.job_id >= first_id and s.finish != "skipped"]


async def _chat(
    llm: amlx.MlxLlm, *messages: str, abort_first_when: Callable[[], bool] | None = None
) -> list[LlmRequest]:
    """Run ``messages`` as turns of one session; returns the model requests ADK made."""
    requests: list[LlmRequest] = []

    def capture(callback_context: Any, llm_request: LlmRequest) -> LlmResponse | None:
        requests.append(llm_request.model_copy(deep=True))
        return None

    def usage(callback_context: Any, llm_response: LlmResponse) -> LlmResponse | None:
        if not llm_response.partial and llm_response.usage_metadata is not None:
            USAGE.append(llm_response.usage_metadata)
        return None

    agent = LlmAgent(
        name="local", model=llm, before_model_callback=capture, after_model_callback=usage
    )
    sessions = InMemorySessionService()
    app = App(name="app", root_agent=agent, plugins=[adk_cancel.CANCEL_PLUGIN])
    runner = Runner(app=app, session_service=sessions)
    session = await sessions.create_session(app_name="app", user_id="u")
    for i, text in enumerate(messages):
        abort = asyncio.Event()
        config = RunConfig(streaming_mode=StreamingMode.SSE)
        async for _ in runner.run_async(
            user_id="u",
            session_id=session.id,
            new_message=types.Content(role="user", parts=[types.Part(text=text)]),
            run_config=config,
            abort_signal=abort,
        ):
            if i == 0 and abort_first_when is not None and abort_first_when():
                abort.set()
    return requests


async def _alone_without_cache(request: LlmRequest, max_tokens: int) -> list[int]:
    """The same request with the prompt cache off: the tokens it generates."""
    greedy = Greedy()
    amlx.configure(prompt_cache_bytes=0)
    try:
        llm = amlx.MlxLlm(
            model=TINY_MODEL, max_output_tokens=max_tokens, logits_processor_factory=greedy
        )
        [r async for r in llm.generate_content_async(request.model_copy(deep=True))]
    finally:
        amlx.configure(prompt_cache_bytes=amlx.ServingOptions().prompt_cache_bytes)
    return greedy.tokens


async def test_turn_two_reads_only_its_new_tokens_and_answers_the_same(
    worker: amlx.MlxWorker, cache: Any
) -> None:
    first = worker.history[-1].job_id + 1 if worker.history else 0
    greedy = Greedy()
    llm = amlx.MlxLlm(
        model=TINY_MODEL,
        max_output_tokens=24,
        logits_processor_factory=Turns("The capital of France is Paris.", greedy),
    )
    USAGE.clear()
    requests = await _chat(llm, "Capital of France?", "And of Italy?")
    turn1, turn2 = _stats_since(worker, first)
    # What ADK (and a billing or tracing plugin) sees of the reuse.
    assert [u.cached_content_token_count for u in USAGE] == [None, turn2.cached_tokens]
    assert USAGE[1].prompt_token_count == turn2.prompt_tokens
    assert turn1.cached_tokens == 0 and turn1.prefill_tokens == turn1.prompt_tokens
    # Turn 1's prompt and answer (all but its end-of-turn token) come from the cache.
    assert turn2.cached_tokens == turn1.prompt_tokens + turn1.generated_tokens - 1
    assert turn2.prefill_tokens == turn2.prompt_tokens - turn2.cached_tokens
    with_cache = list(greedy.tokens)
    assert len(with_cache) == 23
    assert await _alone_without_cache(requests[1], 24) == with_cache
    assert worker.history[-1].cached_tokens == 0


async def test_after_a_cancelled_turn_the_cache_keeps_only_the_prompt(
    worker: amlx.MlxWorker, cache: Any
) -> None:
    first = worker.history[-1].job_id + 1 if worker.history else 0
    talk, greedy = Greedy(), Greedy()
    llm = amlx.MlxLlm(
        model=TINY_MODEL, max_output_tokens=80, logits_processor_factory=Turns(talk, greedy)
    )
    requests = await _chat(
        llm, "Talk to me.", "Now briefly.", abort_first_when=lambda: len(talk.tokens) >= 20
    )
    turn1, turn2 = _stats_since(worker, first)
    assert turn1.finish == "cancelled" and 20 <= turn1.generated_tokens < 80
    # Nothing of the cancelled answer was kept: at most turn 1's prompt is reused.
    assert 0 < turn2.cached_tokens <= turn1.prompt_tokens - 1
    assert turn2.prefill_tokens == turn2.prompt_tokens - turn2.cached_tokens
    assert turn2.finish == "length" and len(greedy.tokens) == 79
    assert await _alone_without_cache(requests[1], 80) == greedy.tokens


def _user(text: str) -> types.Content:
    return types.Content(role="user", parts=[types.Part(text=text)])


async def _prompt_ids(request: LlmRequest) -> list[int]:
    chat = amlx.MlxLlm(model=TINY_MODEL).chat_request(request)

    def render(w: amlx.MlxWorker) -> list[int]:
        return w.loaded(TINY_MODEL).render(chat)

    return await asyncio.wrap_future(amlx.get_worker().call(render))


async def test_a_rolled_back_history_reuses_the_longest_common_prefix(
    worker: amlx.MlxWorker, cache: Any
) -> None:
    llm = amlx.MlxLlm(
        model=TINY_MODEL, max_output_tokens=24, logits_processor_factory=Turns("Paris.", "Rome.")
    )
    requests = await _chat(llm, "Capital of France?", "And of Italy?")
    # Turn 2 taken back and asked differently: the history diverges inside its message.
    rolled = requests[1].model_copy(deep=True)
    assert rolled.contents[-1].role == "user"
    rolled.contents[-1] = _user("And of Spain?")
    greedy = Greedy()
    answer = amlx.MlxLlm(model=TINY_MODEL, max_output_tokens=24, logits_processor_factory=greedy)
    [r async for r in answer.generate_content_async(rolled.model_copy(deep=True))]
    stats = worker.history[-1]

    def encode(w: amlx.MlxWorker) -> list[int]:
        return list(w.loaded(TINY_MODEL).tokenizer.encode("Rome.", add_special_tokens=False))

    stored = await _prompt_ids(requests[1]) + await asyncio.wrap_future(worker.call(encode))
    new = await _prompt_ids(rolled)
    common = next(i for i, (a, b) in enumerate(zip(stored, new, strict=False)) if a != b)
    assert stats.cached_tokens == common > len(await _prompt_ids(requests[0]))
    assert stats.prefill_tokens == stats.prompt_tokens - common
    assert await _alone_without_cache(rolled, 24) == greedy.tokens


async def test_the_byte_bound_holds(worker: amlx.MlxWorker, cache: Any) -> None:
    bound = 40_000  # about three of these entries (the tiny model: 512 bytes a token)
    amlx.configure(prompt_cache_bytes=bound)
    topics = ["dragons", "weather", "Paris", "numbers", "foxes", "tools"]
    llm = amlx.MlxLlm(model=TINY_MODEL, max_output_tokens=8, logits_processor_factory=Greedy())
    seen: list[amlx.JobStats] = []
    for topic in topics:
        request = LlmRequest(contents=[_user(f"{topic.title()}: tell me all about {topic}.")])
        [r async for r in llm.generate_content_async(request)]
        seen.append(worker.history[-1])
        assert 0 < cache.nbytes <= bound
    assert sum(s.prompt_tokens + s.generated_tokens for s in seen) * 512 > 2 * bound
    assert len(cache) < len(topics)  # the oldest went
    # The last one is still there; the first was evicted (only the template's opening
    # tokens, shared by every prompt, are found for it).
    for topic, kept in ((topics[-1], True), (topics[0], False)):
        request = LlmRequest(contents=[_user(f"{topic.title()}: tell me all about {topic}.")])
        [r async for r in llm.generate_content_async(request)]
        stats = worker.history[-1]
        assert (stats.cached_tokens == stats.prompt_tokens - 1) is kept, stats
        assert cache.nbytes <= bound


async def test_a_diverging_prompt_leaves_the_entry_it_started_from_as_it_was(
    worker: amlx.MlxWorker, cache: Any
) -> None:
    """A sequence that starts from a prefix of an entry writes its own keys and values
    after that prefix (read alone, on caches of its own); the entry keeps its own: the
    same prompt answers after it with bitwise the same logits at every step (the tiny
    model's greedy tokens alone would hide a difference: it often repeats one token)."""

    async def ask(topic: str) -> tuple[list[list[float]], amlx.JobStats]:
        steps: list[list[float]] = []

        def factory(tokenizer: Any) -> Sequence[Any]:
            (forbid_eos,) = scripted_output(None)(tokenizer)

            def processor(tokens: Any, logits: Any) -> Any:
                steps.append(logits.tolist())
                return forbid_eos(tokens, logits)

            return [processor]

        llm = amlx.MlxLlm(model=TINY_MODEL, max_output_tokens=24, logits_processor_factory=factory)
        request = LlmRequest(contents=[_user(f"Tell me all about {topic}.")])
        [r async for r in llm.generate_content_async(request)]
        return steps, worker.history[-1]

    first, stats = await ask("dragons and their gold")
    assert stats.cached_tokens == 0 and len(first) == 24
    _, other = await ask("knights and their horses")
    assert 0 < other.cached_tokens < other.prompt_tokens - 1
    again, stats = await ask("dragons and their gold")
    assert stats.cached_tokens == stats.prompt_tokens - 1
    assert again == first
