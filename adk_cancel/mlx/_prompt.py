"""ADK requests to chat-template messages, and generated text back to ADK parts.

Pure Python, no MLX: the event loop builds a :class:`ChatRequest` from an ``LlmRequest``,
the worker renders it with the model's chat template, and :class:`TextRouter` splits the
streamed text into answer, thoughts and tool calls on the way back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.genai import types
from pydantic import BaseModel

logger = logging.getLogger("adk_cancel.mlx")

Message = dict[str, Any]
ToolSpec = dict[str, Any]


@dataclass(frozen=True)
class SamplingOptions:
    """What of ADK's ``GenerateContentConfig`` a local model honours."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    """One generation, in the shape ``tokenizer.apply_chat_template`` takes."""

    messages: list[Message]
    tools: list[ToolSpec] = field(default_factory=list)
    sampling: SamplingOptions = field(default_factory=lambda: SamplingOptions(max_tokens=512))


def _text_of(value: Any) -> str:
    """The text of ADK's system instruction, which may be str, Part, Content or a list."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, types.Part):
        return value.text or ""
    if isinstance(value, types.Content):
        return "\n".join(p.text for p in value.parts or [] if p.text and not p.thought)
    if isinstance(value, Sequence):
        return "\n".join(t for t in (_text_of(v) for v in value) if t)
    raise TypeError(f"unsupported system_instruction type {type(value).__name__}")


def _json_schema(schema: Any) -> Any:
    """A JSON schema from what ADK puts in a declaration or ``response_schema``."""
    if isinstance(schema, types.Schema):
        return schema.json_schema.model_dump(mode="json", exclude_none=True)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    if isinstance(schema, BaseModel):
        return schema.model_dump(mode="json", exclude_none=True)
    return schema


def tool_specs(config: types.GenerateContentConfig) -> list[ToolSpec]:
    """Function declarations as OpenAI-style tools, the shape chat templates expect."""
    specs: list[ToolSpec] = []
    for tool in config.tools or []:
        if not isinstance(tool, types.Tool):
            # A bare Python callable: ADK turns those into declarations before the model
            # sees the request, so this is only reached by direct callers.
            raise TypeError(
                f"MlxLlm takes function declarations (google.genai.types.Tool), "
                f"not {type(tool).__name__}; wrap Python functions in an ADK FunctionTool"
            )
        for decl in tool.function_declarations or []:
            params: Any = {"type": "object", "properties": {}}
            if decl.parameters_json_schema is not None:
                params = _json_schema(decl.parameters_json_schema)
            elif decl.parameters is not None:
                params = _json_schema(decl.parameters)
            specs.append(
                {
                    "type": "function",
                    "function": {
                        "name": decl.name,
                        "description": decl.description or "",
                        "parameters": params,
                    },
                }
            )
    return specs


def _attachment_note(part: types.Part) -> str | None:
    blob = part.inline_data or part.file_data
    if blob is None:
        return None
    what = getattr(blob, "mime_type", None) or "file"
    logger.warning("MlxLlm reads text only; an attachment (%s) was left out of the prompt", what)
    return f"[attachment omitted ({what}): this model reads text only]"


def chat_messages(contents: Sequence[types.Content], system: str) -> list[Message]:
    """ADK contents as chat messages: user/assistant turns, tool calls and tool results.

    Function calls become the assistant message's ``tool_calls`` (arguments as a dict,
    which is what Qwen-style templates serialize) and function responses become ``tool``
    messages, in the order ADK recorded them. Thoughts are not fed back.
    """
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    for content in contents:
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in content.parts or []:
            if part.thought:
                continue
            if part.text is not None:
                texts.append(part.text)
            elif part.function_call is not None:
                fc = part.function_call
                calls.append(
                    {
                        "id": fc.id or "",
                        "type": "function",
                        "function": {"name": fc.name or "", "arguments": dict(fc.args or {})},
                    }
                )
            elif part.function_response is not None:
                fr = part.function_response
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": fr.id or "",
                        "name": fr.name or "",
                        "content": json.dumps(fr.response or {}, ensure_ascii=False, default=str),
                    }
                )
            elif part.executable_code is not None:
                texts.append(f"```\n{part.executable_code.code or ''}\n```")
            elif part.code_execution_result is not None:
                texts.append(part.code_execution_result.output or "")
            elif (note := _attachment_note(part)) is not None:
                texts.append(note)
        text = "\n".join(t for t in texts if t)
        if content.role == "model":
            message: Message = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
        elif text:
            messages.append({"role": "user", "content": text})
    return messages


def _output_schema_note(config: types.GenerateContentConfig) -> str:
    schema = config.response_json_schema or config.response_schema
    if schema is None:
        return ""
    # No constrained decoding here: ask for the shape, ADK validates what comes back.
    return "Reply with only a JSON value, no prose, matching this JSON schema: " + json.dumps(
        _json_schema(schema), ensure_ascii=False
    )


def sampling_options(
    config: types.GenerateContentConfig, default_max_tokens: int
) -> SamplingOptions:
    if config.candidate_count not in (None, 1):
        raise ValueError(
            f"MlxLlm generates one candidate; candidate_count={config.candidate_count} "
            "is not supported (leave it unset)"
        )
    max_tokens = config.max_output_tokens or default_max_tokens
    if max_tokens < 1:
        raise ValueError(f"max_output_tokens must be at least 1, got {max_tokens}")
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=config.temperature if config.temperature is not None else 0.0,
        top_p=config.top_p if config.top_p is not None else 1.0,
        top_k=int(config.top_k) if config.top_k is not None else 0,
        presence_penalty=config.presence_penalty or None,
        frequency_penalty=config.frequency_penalty or None,
        seed=config.seed,
        stop=tuple(s for s in config.stop_sequences or () if s),
    )


def chat_request(
    contents: Sequence[types.Content],
    config: types.GenerateContentConfig,
    default_max_tokens: int,
) -> ChatRequest:
    system = "\n\n".join(
        t for t in (_text_of(config.system_instruction), _output_schema_note(config)) if t
    )
    return ChatRequest(
        messages=chat_messages(contents, system),
        tools=tool_specs(config),
        sampling=sampling_options(config, default_max_tokens),
    )


class TextRouter:
    """Splits streamed model text into answer, thought and tool-call text.

    Markers (``<tool_call>``, ``<think>``, stop sequences) may arrive split across
    tokens, so text that could still become a marker is held back until it cannot.
    A stop sequence ends the output; it and anything after it are dropped.
    """

    ANSWER = "answer"
    THOUGHT = "thought"
    TOOL = "tool"

    def __init__(
        self,
        *,
        tool_markers: tuple[str, str] | None,
        think_markers: tuple[str, str] | None,
        stop: Sequence[str] = (),
    ) -> None:
        self._edges: dict[str, list[tuple[str, str | None]]] = {
            self.ANSWER: [],
            self.THOUGHT: [],
            self.TOOL: [],
        }
        if tool_markers:
            self._edges[self.ANSWER].append((tool_markers[0], self.TOOL))
            self._edges[self.TOOL].append((tool_markers[1], self.ANSWER))
        if think_markers:
            self._edges[self.ANSWER].append((think_markers[0], self.THOUGHT))
            self._edges[self.THOUGHT].append((think_markers[1], self.ANSWER))
            if tool_markers:
                self._edges[self.THOUGHT].append((tool_markers[0], self.TOOL))
        for word in stop:
            # A stop sequence inside a tool call is part of its JSON, not an end.
            self._edges[self.ANSWER].append((word, None))
            self._edges[self.THOUGHT].append((word, None))
        self.state: str | None = self.ANSWER
        self._pending = ""
        # Text with none of the markers' first characters can neither hold a marker nor
        # end with the start of one: it goes out as it is (most tokens, at every step).
        markers = [m for edges in self._edges.values() for m, _ in edges]
        self._starts = "".join({m[0] for m in markers}) if all(markers) else None

    @property
    def stopped(self) -> bool:
        return self.state is None

    def feed(self, text: str) -> list[tuple[str, str]]:
        """``(kind, text)`` pieces now known; ``("tool_end", "")`` closes a tool call."""
        out: list[tuple[str, str]] = []
        self._pending += text
        pending, starts = self._pending, self._starts
        if self.state is not None and starts is not None and not any(c in pending for c in starts):
            self._emit(out, pending)
            self._pending = ""
            return out
        while self.state is not None and self._pending:
            edges = self._edges[self.state]
            hits = [(self._pending.find(m), m, dst) for m, dst in edges]
            found = [h for h in hits if h[0] >= 0]
            if found:
                index, marker, dst = min(found, key=lambda h: (h[0], -len(h[1])))
                self._emit(out, self._pending[:index])
                self._pending = self._pending[index + len(marker) :]
                if self.state == self.TOOL:
                    out.append(("tool_end", ""))
                self.state = dst
                continue
            keep = max((self._partial_suffix(m) for m, _ in edges), default=0)
            self._emit(out, self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            break
        if self.state is None:
            self._pending = ""
        return out

    def finish(self) -> list[tuple[str, str]]:
        """Flush held-back text at the end of generation."""
        out: list[tuple[str, str]] = []
        if self.state is not None:
            self._emit(out, self._pending)
            if self.state == self.TOOL:
                out.append(("tool_end", ""))
        self._pending = ""
        return out

    def _emit(self, out: list[tuple[str, str]], text: str) -> None:
        if text and self.state is not None:
            out.append((self.state, text))

    def _partial_suffix(self, marker: str) -> int:
        """Length of the longest end of the pending text that starts ``marker``."""
        for size in range(min(len(marker) - 1, len(self._pending)), 0, -1):
            if marker.startswith(self._pending[-size:]):
                return size
        return 0
