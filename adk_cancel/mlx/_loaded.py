"""A model loaded on the worker thread: weights, tokenizer, chat template and its batch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._batch import Engine
from ._prompt import ChatRequest

logger = logging.getLogger("adk_cancel.mlx")


@dataclass
class LoadedModel:
    """A model and its tokenizer, owned by the worker thread."""

    name: str
    path: Path
    model: Any
    tokenizer: Any
    engine: Engine
    """Its batch: the generations in flight on this model."""
    warned_no_tools: bool = False

    def render(self, request: ChatRequest) -> list[int]:
        """The prompt token ids, rendered by the model's own chat template."""
        tools: list[dict[str, Any]] | None = request.tools or None
        if tools and not self.tokenizer.has_tool_calling:
            if not self.warned_no_tools:
                logger.warning(
                    "The chat template of %s does not call tools; the agent's %d tool(s) "
                    "are not offered to it. Use a model with a tool-calling template.",
                    self.name,
                    len(tools),
                )
                self.warned_no_tools = True
            tools = None
        if not self.tokenizer.has_chat_template:
            raise ValueError(
                f"{self.path} has no chat template; add one to its tokenizer_config.json"
            )
        try:
            ids = self.tokenizer.apply_chat_template(
                request.messages, tools=tools, add_generation_prompt=True
            )
        except Exception as exc:
            raise ValueError(
                f"The chat template of {self.name} rejected the conversation "
                f"({type(exc).__name__}: {exc}); check the roles of the request's contents"
            ) from exc
        return [int(i) for i in ids]
