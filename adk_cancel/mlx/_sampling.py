"""How one request's next token is chosen: the logits-processor types a caller may supply.

A leaf module (it imports nothing of the package and no MLX), so that the test tooling in
:mod:`adk_cancel.mlx.testing`, the model adapter and the worker can all name these types
without importing one another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

LogitsProcessor = Callable[[Any, Any], Any]
"""``(tokens so far, logits) -> logits``, as in mlx-lm; typed loosely so that pydantic
models can hold one without importing MLX. ``tokens`` is the whole context: the prompt,
then one more token per step."""

LogitsProcessorFactory = Callable[[Any], Sequence[LogitsProcessor]]
"""Called with the mlx-lm tokenizer once per generation; returns fresh processors."""
