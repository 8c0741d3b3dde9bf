"""A deterministic scripted model that needs no API key: something slow to cancel.

``ScriptedLlm`` streams a sentence word by word and then calls a tool (by default
``slow_lookup(seconds=S)``); what the user's last message says picks the script:

| message starts with | what the model does                                                 |
|---------------------|---------------------------------------------------------------------|
| ``quick``           | streams a short answer at once, no tool                             |
| ``words N``         | streams N words, 0.1 s apart, no tool                               |
| ``fast N``          | streams N one-word chunks with no delay, no tool (throughput bench) |
| ``tool S``          | streams a short sentence, then calls the tool with ``seconds=S``    |
| anything else       | streams a sentence slowly, then calls the tool with ``seconds=30``  |

After the tool answers it says "The lookup is done.". Like Gemini, it refuses a history with
a function call that has no response, so a session that a cancel left broken fails its next
turn. In live mode (``/run_live``) each user message gets a slowly streamed sentence (``words
N``: N words), then (for ``tool S``) the tool call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types

from ..adk.models import BaseLlmConnection

WORD_DELAY_S = 0.1
DEFAULT_TOOL_S = 30.0


def _unanswered_calls(request: LlmRequest) -> list[str]:
    pending: dict[str, str] = {}
    for content in request.contents:
        for part in content.parts or []:
            if part.function_call and part.function_call.id:
                pending[part.function_call.id] = part.function_call.name or "?"
            if part.function_response and part.function_response.id:
                pending.pop(part.function_response.id, None)
    return list(pending.values())


def _last_user_text(request: LlmRequest) -> str:
    for content in reversed(request.contents):
        if content.role == "user":
            texts = [p.text for p in content.parts or [] if p.text]
            if texts:
                return " ".join(texts).strip()
    return ""


def _number(text: str, default: float) -> float:
    parts = text.split()
    try:
        return float(parts[1]) if len(parts) > 1 else default
    except ValueError:
        return default


class ScriptedLlm(BaseLlm):
    """A scripted model; see the module docstring. ``tool_name`` is the tool it calls."""

    model: str = "scripted"
    tool_name: str = "slow_lookup"

    @classmethod
    def supported_models(cls) -> list[str]:
        return [r"scripted"]

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        unanswered = _unanswered_calls(llm_request)
        if unanswered:
            # What Gemini does with a history a forced cancel left open.
            raise ValueError(f"function call(s) without a response in history: {unanswered}")
        last = llm_request.contents[-1] if llm_request.contents else None
        after_tool = bool(last and any(p.function_response for p in last.parts or []))
        text = _last_user_text(llm_request)
        command = text.split()[0].lower() if text else ""

        if after_tool:
            words, delay, call = ["The", "lookup", "is", "done."], 0.0, None
        elif command == "quick":
            words, delay, call = ["Here", "is", "a", "quick", "answer."], 0.0, None
        elif command == "words":
            n = int(_number(text, 20))
            words, delay, call = [f"word{i}" for i in range(n)], WORD_DELAY_S, None
        elif command == "fast":
            n = int(_number(text, 100))
            words, delay, call = [f"w{i}" for i in range(n)], 0.0, None
        elif command == "tool":
            words, delay, call = ["Looking", "it", "up."], 0.0, _number(text, DEFAULT_TOOL_S)
        else:
            words = "Let me think about that and look it up for you, one moment please.".split()
            delay, call = WORD_DELAY_S, DEFAULT_TOOL_S

        for word in words:
            if delay:
                await asyncio.sleep(delay)
            if stream:
                yield LlmResponse(
                    content=types.ModelContent(parts=[types.Part(text=word + " ")]),
                    partial=True,
                )
        parts = [types.Part(text=" ".join(words))]
        if call is not None:
            parts.append(
                types.Part(
                    function_call=types.FunctionCall(name=self.tool_name, args={"seconds": call})
                )
            )
        # Counted in words, as a real model reports tokens: without usage, ADK's telemetry
        # logs "Skipping missing token usage metadata" on every run of a scripted agent.
        prompt = sum(
            len((p.text or "").split()) for c in llm_request.contents for p in c.parts or []
        )
        yield LlmResponse(
            content=types.ModelContent(parts=parts),
            finish_reason=types.FinishReason.STOP,
            usage_metadata=types.GenerateContentResponseUsageMetadata(
                prompt_token_count=prompt,
                candidates_token_count=len(words),
                total_token_count=prompt + len(words),
            ),
        )

    @contextlib.asynccontextmanager
    async def connect(self, llm_request: LlmRequest) -> AsyncIterator[BaseLlmConnection]:
        yield _ScriptedConnection(self.tool_name)


class _ScriptedConnection(BaseLlmConnection):
    """Live mode: each user message gets a slowly streamed sentence, then the tool call."""

    def __init__(self, tool_name: str) -> None:
        self._tool_name = tool_name
        self._inbox: asyncio.Queue[types.Content] = asyncio.Queue()

    async def send_history(self, history: list[types.Content]) -> None:
        return None

    async def send_content(self, content: types.Content) -> None:
        await self._inbox.put(content)

    async def send_realtime(self, blob: types.Blob) -> None:
        return None

    async def send_context_update(
        self,
        *,
        system_instruction: str | None = None,
        tools: types.ToolListUnion | None = None,
    ) -> None:
        # Abstract since google-adk 2.15 (absent in 2.13 and 2.14): the script keeps no
        # instruction or tools, so there is nothing to replace.
        return None

    async def receive(self) -> AsyncGenerator[LlmResponse, None]:
        while True:
            content = await self._inbox.get()
            if any(p.function_response for p in content.parts or []):
                yield LlmResponse(
                    content=types.ModelContent(parts=[types.Part(text="The lookup is done.")])
                )
                yield LlmResponse(turn_complete=True)
                continue
            text = " ".join(p.text for p in content.parts or [] if p.text)
            seconds = _number(text, DEFAULT_TOOL_S) if text.startswith("tool") else None
            words = "Let me look that up.".split()
            if text.startswith("words"):
                words = [f"word{i}" for i in range(int(_number(text, 20)))]
            for word in words:
                await asyncio.sleep(WORD_DELAY_S)
                yield LlmResponse(
                    content=types.ModelContent(parts=[types.Part(text=word + " ")]),
                    partial=True,
                )
            if seconds is None:
                yield LlmResponse(turn_complete=True)
                continue
            yield LlmResponse(
                content=types.ModelContent(
                    parts=[
                        types.Part(
                            function_call=types.FunctionCall(
                                name=self._tool_name, args={"seconds": seconds}
                            )
                        )
                    ]
                )
            )

    async def close(self) -> None:
        return None
