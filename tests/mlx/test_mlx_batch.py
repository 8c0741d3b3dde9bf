"""Continuous batching: concurrent generations share the model, exactly and cancellably.

Greedy decoding of the tiny model with its end-of-turn token forbidden, so every answer
runs to ``max_output_tokens``: the tokens of each answer are recorded by its logits
processor (which sees the whole context at every step) and compared with the same
request run alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types

import adk_cancel.mlx as amlx
from adk_cancel.mlx.testing import TINY_MODEL, scripted_output

pytestmark = pytest.mark.timeout(90)

PROMPTS = [
    "Hello there, how are you?",
    "The capital of France is",
    "Tell me a long story about a dragon and a knight who",
    "Hi",
]


class Recorder:
    """A logits-processor factory: no end of turn, and the tokens each call generated
    and the logits of each step (by context length: a step's graph may be built twice)."""

    def __init__(self, signal_at: int | None = None) -> None:
        self.tokens: list[int] = []
        self.logits: dict[int, list[float]] = {}
        self.prompt_len: int | None = None
        self.calls = 0
        self.signal_at = signal_at
        self.reached = threading.Event()

    def __call__(self, tokenizer: Any) -> Sequence[Any]:
        (forbid_eos,) = scripted_output(None)(tokenizer)

        def processor(tokens: Any, logits: Any) -> Any:
            if self.prompt_len is None:
                self.prompt_len = int(tokens.shape[0])
            self.calls += 1
            if self.calls == self.signal_at:
                self.reached.set()
            self.tokens = [int(t) for t in tokens.tolist()[self.prompt_len :]]
            self.logits[int(tokens.shape[0])] = logits.tolist()
            return forbid_eos(tokens, logits)

        return [processor]


def _request(text: str, max_tokens: int) -> LlmRequest:
    return LlmRequest(
        contents=[types.Content(role="user", parts=[types.Part(text=text)])],
        config=types.GenerateContentConfig(max_output_tokens=max_tokens),
    )


async def _answer(
    text: str, max_tokens: int, recorder: Recorder, stream: bool = False
) -> tuple[str, amlx.JobStats]:
    llm = amlx.MlxLlm(model=TINY_MODEL, logits_processor_factory=recorder)
    responses = [r async for r in llm.generate_content_async(_request(text, max_tokens), stream)]
    final = responses[-1]
    assert not final.partial and final.content is not None and final.content.parts
    stats = next(s for s in reversed(amlx.get_worker().history) if s.job_id == _job_of(final))
    return final.content.parts[0].text or "", stats


def _job_of(response: LlmResponse) -> int:
    # Every job's id is unique; the final response does not carry it, so find the job by
    # its usage (prompt and generated token counts), which tests keep distinct.
    usage = response.usage_metadata
    assert usage is not None
    matches = [
        s.job_id
        for s in amlx.get_worker().history
        if s.prompt_tokens == usage.prompt_token_count
        and s.generated_tokens == usage.candidates_token_count
    ]
    return matches[-1]


async def _sequential(max_tokens: int) -> list[tuple[str, list[int]]]:
    out = []
    for text in PROMPTS:
        recorder = Recorder()
        answer, stats = await _answer(text, max_tokens, recorder)
        assert stats.decode_batch_max == 1
        out.append((answer, recorder.tokens))
    return out


@pytest.fixture
def fresh_cache(worker: amlx.MlxWorker) -> AsyncIterator[None]:
    """No prompt-cache entries from earlier tests: every prompt is read in full."""

    def clear(w: amlx.MlxWorker) -> None:
        w.loaded(TINY_MODEL).engine.prompt_cache.clear()

    worker.call(clear).result(timeout=30)
    yield None


async def test_concurrent_sessions_get_the_tokens_they_get_alone(
    worker: amlx.MlxWorker, fresh_cache: None
) -> None:
    alone = await _sequential(48)
    recorders = [Recorder() for _ in PROMPTS]
    together = await asyncio.gather(
        *(_answer(t, 48, r) for t, r in zip(PROMPTS, recorders, strict=True))
    )
    assert [(a, r.tokens) for (a, _), r in zip(together, recorders, strict=True)] == alone
    assert [len(r.tokens) for r in recorders] == [47] * 4, [r.calls for r in recorders]
    # They really shared the model: one decode step for all four.
    assert [s.decode_batch_max for _, s in together] == [4, 4, 4, 4]


async def test_cancelling_one_sequence_of_a_batch(
    worker: amlx.MlxWorker, fresh_cache: None
) -> None:
    alone = await _sequential(64)
    recorders = [Recorder(signal_at=20 if i == 1 else None) for i in range(len(PROMPTS))]
    tasks = [
        asyncio.create_task(_answer(t, 64, r, stream=True))
        for t, r in zip(PROMPTS, recorders, strict=True)
    ]
    assert await asyncio.to_thread(recorders[1].reached.wait, 30)
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    cancelled = next(s for s in reversed(worker.history) if s.finish == "cancelled")
    assert cancelled.stopped_by == "cancel"
    assert cancelled.tokens_after_cancel <= 1, cancelled
    assert 19 <= cancelled.generated_tokens < 64  # call 20 sees 19 generated tokens
    # The others: exactly their tokens alone, none lost or repeated around the cancel.
    for i in (0, 2, 3):
        answer, stats = results[i]  # type: ignore[misc]
        assert (answer, recorders[i].tokens) == alone[i]
        assert stats.decode_batch_max == 4 and stats.finish == "length"


async def test_cancel_while_reading_a_prompt_beside_a_batch(
    worker: amlx.MlxWorker, fresh_cache: None
) -> None:
    alone = await _sequential(96)
    recorders = [Recorder() for _ in PROMPTS[:2]]
    decoding = [
        asyncio.create_task(_answer(t, 96, r)) for t, r in zip(PROMPTS[:2], recorders, strict=True)
    ]

    class AbortDuringPrefill:
        reads = 0

        @property
        def is_aborted(self) -> bool:
            self.reads += 1
            return self.reads > 6  # a few chunks into a long prompt

    while worker.running is None or worker.running.generated_tokens < 5:
        await asyncio.sleep(0.001)
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 400
    llm = amlx.MlxLlm(model=TINY_MODEL, prefill_chunk_s=0.002)
    amlx.bind_abort_source(AbortDuringPrefill())
    (final,) = [r async for r in llm.generate_content_async(_request(long_prompt, 8))]
    assert final.interrupted is True
    stopped = next(s for s in reversed(worker.history) if s.finish == "cancelled")
    assert stopped.stopped_by == "abort" and stopped.generated_tokens == 0
    assert 1 <= stopped.prefill_tokens < stopped.prompt_tokens - 1000
    assert stopped.prefill_chunks >= 3
    assert stopped.cancel_to_idle_s is not None and stopped.cancel_to_idle_s < 0.25
    for i, task in enumerate(decoding):
        answer, stats = await task
        assert (answer, recorders[i].tokens) == alone[i]
        # It was read beside them: they were still decoding when it stopped.
        assert stats.stopped_at is not None and stopped.stopped_at is not None
        assert stats.stopped_at > stopped.stopped_at


async def test_per_request_samplers_and_processors_in_one_batch(
    worker: amlx.MlxWorker, fresh_cache: None
) -> None:
    """Seeded sampling draws from the request's own key: batch or not, same answer."""
    configs = [
        types.GenerateContentConfig(max_output_tokens=24, temperature=0.0),
        types.GenerateContentConfig(max_output_tokens=24, temperature=1.5, seed=1),
        types.GenerateContentConfig(max_output_tokens=24, temperature=1.5, seed=2, top_p=0.9),
        types.GenerateContentConfig(max_output_tokens=24, temperature=0.0, presence_penalty=1.5),
    ]

    async def answer(i: int) -> tuple[str, list[int], int]:
        recorder = Recorder()
        llm = amlx.MlxLlm(model=TINY_MODEL, logits_processor_factory=recorder)
        request = LlmRequest(
            contents=[types.Content(role="user", parts=[types.Part(text=PROMPTS[i])])],
            config=configs[i],
        )
        (final,) = [r async for r in llm.generate_content_async(request)]
        assert final.content is not None and final.content.parts
        return final.content.parts[0].text or "", recorder.tokens, _job_of(final)

    alone = [await answer(i) for i in range(4)]
    together = await asyncio.gather(*(answer(i) for i in range(4)))
    assert [a[:2] for a in together] == [a[:2] for a in alone]
    assert alone[1][:2] != alone[2][:2]  # different seeds, different draws
    by_id = {s.job_id: s for s in worker.history}
    assert [by_id[a[2]].decode_batch_max for a in together] == [4, 4, 4, 4]


async def test_a_sequence_joined_then_alone_again_keeps_its_tokens(
    worker: amlx.MlxWorker, fresh_cache: None
) -> None:
    """A sequence alone decodes on caches of its own, two share batch caches: a sequence
    joined mid-answer and then left alone again computes exactly what it computes alone
    (bitwise the same logits at every step: the tiny model often repeats one token, which
    would hide a difference), and the prompt-cache entries it started from stay as they
    were."""

    async def alone(text: str, max_tokens: int) -> Recorder:
        recorder = Recorder()
        _, stats = await _answer(text, max_tokens, recorder)
        assert stats.decode_batch_max == 1
        return recorder

    long_text, short_text = PROMPTS[2], PROMPTS[0]
    expected = [await alone(long_text, 96), await alone(short_text, 24)]

    # Both prompts are now in the prompt cache: both start from (views of) its entries.
    # The short one first: the long one joins it as row 1, and goes on alone after it.
    short = Recorder(signal_at=5)
    first = asyncio.create_task(_answer(short_text, 24, short))
    assert await asyncio.to_thread(short.reached.wait, 30)
    long = Recorder()
    _, long_stats = await _answer(long_text, 96, long)
    _, short_stats = await first
    assert short_stats.stopped_at is not None and long_stats.stopped_at is not None
    assert short_stats.stopped_at < long_stats.stopped_at - 0.01
    assert long_stats.cached_tokens > 0 and short_stats.cached_tokens > 0
    assert long_stats.decode_batch_max == short_stats.decode_batch_max == 2

    again = [await alone(long_text, 96), await alone(short_text, 24)]
    for recorders in ([long, short], again):
        assert [(r.tokens, r.logits) for r in recorders] == [(r.tokens, r.logits) for r in expected]
