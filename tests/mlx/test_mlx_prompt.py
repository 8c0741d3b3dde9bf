"""ADK request -> chat messages, and streamed text -> answer/tool-call pieces (no MLX)."""

from __future__ import annotations

import pytest
from google.genai import types
from pydantic import BaseModel

from adk_cancel.mlx._prompt import TextRouter, chat_request, sampling_options, tool_specs


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


def _route(router: TextRouter, chunks: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for chunk in chunks:
        out.extend(router.feed(chunk))
    out.extend(router.finish())
    merged: list[tuple[str, str]] = []
    for kind, text in out:
        if merged and merged[-1][0] == kind and kind != "tool_end":
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


def test_router_finds_markers_split_across_tokens() -> None:
    router = TextRouter(tool_markers=("<tool_call>", "</tool_call>"), think_markers=None)
    chunks = ["Let me", " check.<to", "ol_c", 'all>\n{"name": "f"}\n</tool', "_call>", "Done <"]
    assert _route(router, chunks) == [
        ("answer", "Let me check."),
        ("tool", '\n{"name": "f"}\n'),
        ("tool_end", ""),
        ("answer", "Done <"),
    ]


def test_router_never_shows_a_marker_prefix_early() -> None:
    router = TextRouter(tool_markers=("<tool_call>", "</tool_call>"), think_markers=None)
    assert router.feed("Hi <tool") == [("answer", "Hi ")]
    assert router.feed("_call>") == []


def test_router_stop_sequence_ends_output_but_not_inside_tool_json() -> None:
    router = TextRouter(
        tool_markers=("<tool_call>", "</tool_call>"), think_markers=None, stop=["STOP"]
    )
    pieces = _route(router, ['<tool_call>{"a": "STOP"}</tool_call>ok S', "TOP and more"])
    assert pieces == [("tool", '{"a": "STOP"}'), ("tool_end", ""), ("answer", "ok ")]
    assert router.stopped


def test_router_thoughts() -> None:
    router = TextRouter(tool_markers=None, think_markers=("<think>", "</think>"))
    assert _route(router, ["<think>hm", "m</think>Yes"]) == [
        ("thought", "hmm"),
        ("answer", "Yes"),
    ]
