"""Runs MlxLlm workloads in its own process for bench/mlx_serving.py; one JSON task per line.

Only ``MlxLlm``'s constructor, ``generate_content_async`` and ADK's ``Runner`` are used, so
the same driver measures this checkout and an older one (``PYTHONPATH`` picks which):
``python bench/_mlx_driver.py`` reads ``{"task": ...}`` lines on stdin and answers each
with one JSON line on stdout. Client-side times are ``time.perf_counter`` in this process.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.apps import App
from google.adk.models.llm_request import LlmRequest
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.genai import types

import adk_cancel
import adk_cancel.mlx as amlx


def _ban_eos(eos: list[int]) -> Any:
    """The processors mlx_lm.server builds for ``logit_bias``: the same work on both sides."""

    def factory(tokenizer: Any) -> list[Any]:
        from mlx_lm.sample_utils import make_logits_processors

        return list(make_logits_processors(logit_bias=dict.fromkeys(eos, -1e9)))

    return factory


def _request(text: str, max_tokens: int) -> LlmRequest:
    return LlmRequest(
        contents=[types.Content(role="user", parts=[types.Part(text=text)])],
        config=types.GenerateContentConfig(max_output_tokens=max_tokens, temperature=0.0),
    )


async def _session(llm: amlx.MlxLlm, text: str, max_tokens: int) -> dict[str, Any]:
    """One streamed answer: when each partial came, and the token count."""
    began = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async for response in llm.generate_content_async(_request(text, max_tokens), stream=True):
        if response.partial:
            stamps.append(time.perf_counter())
        if response.usage_metadata is not None:
            tokens = response.usage_metadata.candidates_token_count or tokens
    return {"began": began, "stamps": stamps, "tokens": tokens}


async def throughput(task: dict[str, Any]) -> dict[str, Any]:
    llm = amlx.MlxLlm(model=task["model"], logits_processor_factory=_ban_eos(task["eos"]))
    sessions = await asyncio.gather(
        *(_session(llm, text, task["max_tokens"]) for text in task["prompts"])
    )
    return {"sessions": sessions}


async def cancel_in_batch(task: dict[str, Any]) -> dict[str, Any]:
    """``len(prompts)`` sessions; the first is cancelled once it has ``cancel_after`` partials."""
    llm = amlx.MlxLlm(model=task["model"], logits_processor_factory=_ban_eos(task["eos"]))
    reached = asyncio.Event()
    first_stamps: list[float] = []

    async def victim() -> None:
        async for _ in llm.generate_content_async(
            _request(task["prompts"][0], task["max_tokens"]), stream=True
        ):
            first_stamps.append(time.perf_counter())
            if len(first_stamps) == task["cancel_after"]:
                reached.set()

    others = [
        asyncio.create_task(_session(llm, text, task["max_tokens"])) for text in task["prompts"][1:]
    ]
    cancelled = asyncio.create_task(victim())
    await reached.wait()
    cancel_at = time.perf_counter()
    cancelled.cancel()
    try:
        await cancelled
    except asyncio.CancelledError:
        pass
    stats = next(s for s in reversed(amlx.get_worker().history) if s.finish == "cancelled")
    return {
        "cancel_at": cancel_at,
        "tokens_after_cancel": stats.tokens_after_cancel,
        "cancel_to_idle_ms": 1000 * (stats.cancel_to_idle_s or 0.0),
        "others": await asyncio.gather(*others),
    }


async def chat(task: dict[str, Any]) -> dict[str, Any]:
    """A chat of ``len(messages)`` turns through ADK: time to first token of each."""
    llm = amlx.MlxLlm(model=task["model"], max_output_tokens=task["max_tokens"])
    agent = LlmAgent(name="local", model=llm, instruction=task["instruction"])
    sessions = InMemorySessionService()
    runner = Runner(
        app=App(name="bench", root_agent=agent, plugins=[adk_cancel.CANCEL_PLUGIN]),
        session_service=sessions,
    )
    session = await sessions.create_session(app_name="bench", user_id="u")
    from google.adk.agents.run_config import RunConfig, StreamingMode

    turns = []
    for text in task["messages"]:
        began = time.perf_counter()
        first: float | None = None
        answer = ""
        async for event in runner.run_async(
            user_id="u",
            session_id=session.id,
            new_message=types.Content(role="user", parts=[types.Part(text=text)]),
            run_config=RunConfig(streaming_mode=StreamingMode.SSE),
        ):
            if first is None and event.partial:
                first = time.perf_counter()
            if not event.partial and event.content and event.content.parts:
                answer = event.content.parts[0].text or ""
        stats = amlx.get_worker().history[-1]
        turns.append(
            {
                "ttft": (first or time.perf_counter()) - began,
                "prompt_tokens": stats.prompt_tokens,
                "cached_tokens": getattr(stats, "cached_tokens", 0),
                "answer": answer,
            }
        )
    return {"turns": turns}


async def ceiling(task: dict[str, Any]) -> dict[str, Any]:
    """The bare model's decode step (model call, argmax, eval) at each batch size, on the
    worker thread with the model the adapter loaded: no server around it. Batching can
    gain at most ``rows * step(1) / step(rows)`` on this machine, whoever does it."""

    def measure(worker: Any) -> dict[str, float]:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        model = worker.loaded(task["model"]).model
        steps: dict[str, float] = {}
        for rows in task["levels"]:
            cache = make_prompt_cache(model)
            model(mx.array([[5] * 32] * rows), cache=cache)
            mx.eval([c.state for c in cache])
            y = mx.array([[7]] * rows)
            times = []
            for _ in range(task["steps"]):
                began = time.perf_counter()
                y = mx.argmax(model(y, cache=cache)[:, -1, :], axis=-1)[:, None]
                mx.eval(y)
                times.append(time.perf_counter() - began)
            steps[str(rows)] = statistics.median(times)
        return steps

    return {"step_s": await asyncio.wrap_future(amlx.get_worker().call(measure))}


async def main() -> None:
    tasks = {
        "throughput": throughput,
        "cancel_in_batch": cancel_in_batch,
        "chat": chat,
        "ceiling": ceiling,
    }
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        task = json.loads(line)
        if task["task"] == "configure":
            if hasattr(amlx, "configure"):
                amlx.configure(**task["options"])
            result: dict[str, Any] = {"ok": True}
        elif task["task"] == "load":
            await asyncio.wrap_future(amlx.MlxLlm(model=task["model"]).preload())
            result = {"ok": True}
        else:
            result = await tasks[task["task"]](task)
        print(json.dumps(result), flush=True)
    await amlx.ashutdown()


if __name__ == "__main__":
    asyncio.run(main())
