"""An agent on the tiny random MLX model that talks until it is stopped (server tests)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from google.adk.agents import LlmAgent

from adk_cancel.mlx import MlxLlm, watch_abort
from adk_cancel.mlx.testing import scripted_output

TALKING = threading.Event()
"""Set once the current answer is 20 tokens long; tests clear it before each run."""


def _endless_and_signalling(tokenizer: Any) -> Sequence[Any]:
    (forbid_eos,) = scripted_output(None)(tokenizer)
    calls = 0

    def processor(tokens: Any, logits: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 20:
            TALKING.set()
        return forbid_eos(tokens, logits)

    return [processor]


root_agent = LlmAgent(
    name="tiny_mlx_agent",
    model=MlxLlm(
        model="mlx/tiny-random",
        max_output_tokens=100_000,
        logits_processor_factory=_endless_and_signalling,
    ),
    instruction="Talk.",
    before_model_callback=watch_abort,
)
