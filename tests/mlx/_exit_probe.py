"""Run by test_mlx_exit.py in a fresh interpreter: use the MLX worker, then just exit.

argv[1] == "atexit": leave the worker running (a generation cancelled, the thread idle)
and rely on the atexit hook; "explicit": call shutdown() first.
"""

from __future__ import annotations

import asyncio
import sys

from google.adk.models.llm_request import LlmRequest
from google.genai import types

import adk_cancel.mlx as amlx
from adk_cancel.mlx.testing import scripted_output


async def main() -> None:
    request = LlmRequest(contents=[types.Content(role="user", parts=[types.Part(text="Hi")])])
    llm = amlx.MlxLlm(model="mlx/tiny-random", max_output_tokens=16)
    (answer,) = [r async for r in llm.generate_content_async(request)]
    assert answer.usage_metadata is not None
    endless = amlx.MlxLlm(
        model="mlx/tiny-random",
        max_output_tokens=100_000,
        logits_processor_factory=scripted_output(None),
    )
    agen = endless.generate_content_async(request, stream=True)
    for _ in range(5):
        await agen.__anext__()
    await agen.aclose()
    assert amlx.get_worker().history[-1].finish == "cancelled"


asyncio.run(main())
if sys.argv[1] == "explicit":
    assert amlx.shutdown(timeout=10)
print("probe done", flush=True)
