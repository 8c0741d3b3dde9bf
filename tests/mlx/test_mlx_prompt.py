"""What MlxLlm makes of an ADK request: chat messages, tools, sampling (no MLX, no model)."""

from __future__ import annotations

from typing import Any

import pytest
from google.adk.models.llm_request import LlmRequest
from google.genai import types
from pydantic import BaseModel

import adk_cancel.mlx as amlx
from adk_cancel.mlx.testing import TINY_MODEL


def chat_request(
    contents: list[types.Content], config: types.GenerateContentConfig, default_max_tokens: int
) -> amlx.ChatRequest:
    llm = amlx.MlxLlm(model=TINY_MODEL, max_output_tokens=default_max_tokens)
    return llm.chat_request(LlmRequest(contents=contents, config=config))


def tool_specs(config: types.GenerateContentConfig) -> list[dict[str, Any]]:
    return chat_request([_user("x")], config, 8).tools


def sampling_options(
    config: types.GenerateContentConfig, default_max_tokens: int
) -> amlx.SamplingOptions:
    return chat_request([_user("x")], config, default_max_tokens).sampling


def _user(text: str) -> types.Content:
    return types.Content(role="user", parts=[types.Part(text=text)])


def test_turns_tool_calls_and_results_map_to_chat_messages() -> None:
    contents = [
        _user("Weather in Paris?"),
        types.Content(
            role="model",
            parts=[
                types.Part(text="thinking...", thought=True),
                types.Part(text="Let me check."),
                types.Part(
                    function_call=types.FunctionCall(
                        id="c1", name="get_weather", args={"city": "Paris"}
                    )
                ),
            ],
        ),
        types.Content(
            role="user",
            parts=[
                types.Part(
                    function_response=types.FunctionResponse(
                        id="c1", name="get_weather", response={"temp_c": 21}
                    )
                )
            ],
        ),
    ]
    config = types.GenerateContentConfig(system_instruction="Be brief.")
    request = chat_request(contents, config, default_max_tokens=64)
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "name": "get_weather",
            "content": '{"temp_c": 21}',
        },
    ]


def test_system_instruction_as_content_and_output_schema_note() -> None:
    class Answer(BaseModel):
        city: str

    config = types.GenerateContentConfig(
        system_instruction=types.Content(parts=[types.Part(text="A"), types.Part(text="B")]),
        response_schema=Answer,
    )
    request = chat_request([_user("x")], config, default_max_tokens=8)
    system = request.messages[0]
    assert system["role"] == "system"
    assert system["content"].startswith("A\nB\n\nReply with only a JSON value")
    assert '"city"' in system["content"]


def test_attachments_are_named_not_dropped_silently() -> None:
    contents = [
        types.Content(
            role="user",
            parts=[
                types.Part(text="What is this?"),
                types.Part(inline_data=types.Blob(mime_type="image/png", data=b"\x89PNG")),
            ],
        )
    ]
    request = chat_request(contents, types.GenerateContentConfig(), default_max_tokens=8)
    assert request.messages == [
        {
            "role": "user",
            "content": "What is this?\n"
            "[attachment omitted (image/png): this model reads text only]",
        }
    ]


def test_tool_declarations_become_template_tools() -> None:
    config = types.GenerateContentConfig(
        tools=[
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name="get_weather",
                        description="Current weather.",
                        parameters=types.Schema(
                            type=types.Type.OBJECT,
                            properties={"city": types.Schema(type=types.Type.STRING)},
                            required=["city"],
                        ),
                    ),
                    types.FunctionDeclaration(
                        name="now",
                        parameters_json_schema={"type": "object", "properties": {}},
                    ),
                ]
            )
        ]
    )
    assert tool_specs(config) == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "now",
                "description": "",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]


def test_generation_config_is_honoured_or_refused() -> None:
    config = types.GenerateContentConfig(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        max_output_tokens=12,
        stop_sequences=["END", ""],
        seed=7,
        presence_penalty=0.5,
    )
    opts = sampling_options(config, default_max_tokens=100)
    assert (opts.temperature, opts.top_p, opts.top_k, opts.max_tokens) == (0.7, 0.9, 40, 12)
    assert (opts.stop, opts.seed, opts.presence_penalty) == (("END",), 7, 0.5)
    assert sampling_options(types.GenerateContentConfig(), 100).max_tokens == 100
    with pytest.raises(ValueError, match="candidate_count"):
        sampling_options(types.GenerateContentConfig(candidate_count=2), 100)
