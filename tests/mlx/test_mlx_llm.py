"""MlxLlm through a real ADK Runner: text, streaming, tool calls, generation config."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.adk.agents import LlmAgent
from google.adk.agents.run_config import RunConfig, StreamingMode
from google.adk.events import Event
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.models.registry import LLMRegistry
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.genai import types

import adk_cancel.mlx as amlx
from adk_cancel.mlx.testing import scripted_output

pytestmark = pytest.mark.timeout(60)


def _message(text: str) -> types.Content:
    return types.Content(role="user", parts=[types.Part(text=text)])


async def _run(
    agent: LlmAgent, text: str, *, streaming: bool = False
) -> tuple[list[Event], InMemorySessionService, str]:
    sessions = InMemorySessionService()
    runner = Runner(app_name="app", agent=agent, session_service=sessions)
    session = await sessions.create_session(app_name="app", user_id="u")
    config = RunConfig(streaming_mode=StreamingMode.SSE if streaming else StreamingMode.NONE)
    events = [
        event
        async for event in runner.run_async(
            user_id="u", session_id=session.id, new_message=_message(text), run_config=config
        )
    ]
    return events, sessions, session.id


def _text(content: types.Content | None) -> str | None:
    """The text of a content's only part."""
    assert content is not None and content.parts is not None
    (part,) = content.parts
    return part.text


def _scripts(*texts: str) -> amlx.MlxLlm:
    """A tiny model that says ``texts[0]`` on its first call, ``texts[1]`` on the next..."""
    pending: Iterator[str] = iter(texts)

    def factory(tokenizer: Any) -> Sequence[Any]:
        return scripted_output(next(pending))(tokenizer)

    return amlx.MlxLlm(model="mlx/tiny-random", logits_processor_factory=factory)


def test_registry_resolves_mlx_names() -> None:
    assert LLMRegistry.resolve("mlx/tiny-random") is amlx.MlxLlm
    assert LLMRegistry.resolve("mlx//opt/models/my-model") is amlx.MlxLlm
    llm = LLMRegistry.new_llm("mlx:tiny-random")
    assert isinstance(llm, amlx.MlxLlm) and llm.model == "mlx/tiny-random"
    assert amlx.MlxLlm().model == "mlx/smollm2-135m"
    assert amlx.MlxLlm().capabilities.output_schema_and_tools is False


async def test_agent_with_model_name_answers_with_usage_and_finish_reason(
    tiny_model: str,
) -> None:
    agent = LlmAgent(
        name="local",
        model=tiny_model,
        instruction="Answer briefly.",
        generate_content_config=types.GenerateContentConfig(max_output_tokens=7),
    )
    events, _, _ = await _run(agent, "Hello!")
    assert isinstance(agent.canonical_model, amlx.MlxLlm)
    (answer,) = [e for e in events if e.author == "local"]
    assert answer.content is not None and answer.content.parts
    assert answer.finish_reason == types.FinishReason.MAX_TOKENS
    usage = answer.usage_metadata
    assert usage is not None and usage.candidates_token_count == 7
    assert usage.prompt_token_count is not None and usage.prompt_token_count > 5
    assert usage.total_token_count == usage.prompt_token_count + 7


async def test_scripted_text_ends_with_stop(tiny_model: str) -> None:
    agent = LlmAgent(name="local", model=_scripts("The capital of France is Paris."))
    events, _, _ = await _run(agent, "Capital of France?")
    (answer,) = events
    assert answer.content is not None
    assert answer.content.parts == [types.Part(text="The capital of France is Paris.")]
    assert answer.finish_reason == types.FinishReason.STOP
    assert answer.usage_metadata is not None
    # The script's tokens plus the end-of-turn token.
    assert answer.usage_metadata.candidates_token_count is not None
    assert answer.usage_metadata.candidates_token_count > 5


async def test_streaming_yields_partials_then_the_aggregate(tiny_model: str) -> None:
    text = "Let me think about that. The answer is 42."
    agent = LlmAgent(name="local", model=_scripts(text))
    events, sessions, session_id = await _run(agent, "Question?", streaming=True)
    partials = [e for e in events if e.partial]
    finals = [e for e in events if not e.partial]
    assert len(partials) >= 2
    assert "".join(_text(p.content) or "" for p in partials) == text
    assert [f.content.parts for f in finals if f.content] == [[types.Part(text=text)]]
    assert finals[-1].finish_reason == types.FinishReason.STOP
    # Usage is cumulative while streaming: a cut-off stream still reports its tokens.
    counts = [p.usage_metadata.candidates_token_count or 0 for p in partials if p.usage_metadata]
    assert counts == sorted(counts) and counts[-1] > 5
    session = await sessions.get_session(app_name="app", user_id="u", session_id=session_id)
    assert session is not None
    assert [_text(e.content) for e in session.events if e.author == "local"] == [text]


def get_weather(city: str) -> dict[str, Any]:
    """Current weather of a city."""
    return {"city": city, "sky": "sunny", "temp_c": 21}


@pytest.mark.parametrize("streaming", [False, True])
async def test_tool_call_is_parsed_executed_and_answered(tiny_model: str, streaming: bool) -> None:
    model = _scripts(
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
        "\n</tool_call>",
        "It is sunny in Paris, 21 degrees.",
    )
    agent = LlmAgent(name="local", model=model, tools=[get_weather])
    events, _, _ = await _run(agent, "Weather in Paris?", streaming=streaming)
    finals = [e for e in events if not e.partial]
    call_event, response_event, answer = finals
    assert call_event.content is not None and call_event.content.parts is not None
    text_part, call_part = call_event.content.parts
    assert text_part.text == "Let me check."
    call = call_part.function_call
    assert call is not None and call.name == "get_weather" and call.args == {"city": "Paris"}
    assert call.id
    responses = response_event.get_function_responses()
    assert [(r.id, r.response) for r in responses] == [(call.id, get_weather("Paris"))]
    assert answer.content is not None
    assert answer.content.parts == [types.Part(text="It is sunny in Paris, 21 degrees.")]


async def test_tool_result_reaches_the_prompt(tiny_model: str) -> None:
    """The second model call sees the call and its result, rendered by the template."""
    model = _scripts(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
        "Done.",
    )
    captured: list[LlmRequest] = []

    def before(callback_context: Any, llm_request: LlmRequest) -> LlmResponse | None:
        captured.append(llm_request.model_copy(deep=True))
        return None

    agent = LlmAgent(name="local", model=model, tools=[get_weather], before_model_callback=before)
    await _run(agent, "Weather in Oslo?")

    prompt = await amlx.MlxLlm(model="mlx/tiny-random").render(captured[-1])
    assert '"name": "get_weather"' in prompt  # the declared tool
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}' in prompt
    assert '<tool_response>\n{"city": "Oslo", "sky": "sunny", "temp_c": 21}' in prompt


async def test_malformed_tool_call_is_kept_as_text(tiny_model: str) -> None:
    model = _scripts("<tool_call>\n{not json}\n</tool_call>")
    agent = LlmAgent(name="local", model=model, tools=[get_weather])
    events, _, _ = await _run(agent, "Weather?")
    (answer,) = events
    assert answer.finish_reason == types.FinishReason.MALFORMED_FUNCTION_CALL
    assert answer.content is not None
    assert answer.content.parts == [types.Part(text="<tool_call>\n{not json}\n</tool_call>")]


async def test_stop_sequence_cuts_the_answer(tiny_model: str) -> None:
    model = _scripts("One. Two. STOP Three.")
    agent = LlmAgent(
        name="local",
        model=model,
        generate_content_config=types.GenerateContentConfig(stop_sequences=["STOP"]),
    )
    (answer,), _, _ = await _run(agent, "Count")
    assert answer.content is not None
    assert answer.content.parts == [types.Part(text="One. Two. ")]
    assert answer.finish_reason == types.FinishReason.STOP


async def _sample(seed: int | None, temperature: float) -> str:
    llm = amlx.MlxLlm(model="mlx/tiny-random")
    request = LlmRequest(
        contents=[_message("Tell me a story.")],
        config=types.GenerateContentConfig(
            temperature=temperature, seed=seed, max_output_tokens=24, top_p=0.95
        ),
    )
    (response,) = [r async for r in llm.generate_content_async(request)]
    assert response.content is not None and response.content.parts
    return response.content.parts[0].text or ""


async def test_seed_and_temperature_are_honoured(tiny_model: str) -> None:
    first = await _sample(seed=1, temperature=1.5)
    assert await _sample(seed=1, temperature=1.5) == first
    others = {await _sample(seed=s, temperature=1.5) for s in (2, 3, 4)}
    assert others - {first}, "different seeds should sample differently"
    greedy = await _sample(seed=None, temperature=0.0)
    assert await _sample(seed=None, temperature=0.0) == greedy


def test_unknown_model_fails_when_the_model_is_built(tmp_path: Path) -> None:
    with pytest.raises(amlx.ModelNotFoundError, match=r"neither a known model \(mlx/smollm2"):
        amlx.MlxLlm(model="mlx/no-such-model")
    with pytest.raises(amlx.ModelNotFoundError, match="models prepare"):
        LLMRegistry.new_llm("mlx/no-such-model")  # what an LlmAgent(model="mlx/...") resolves
    # A directory is accepted by its config.json alone: nothing is loaded to check it.
    (tmp_path / "config.json").write_text("{}")
    assert amlx.MlxLlm(model=f"mlx/{tmp_path}").model == f"mlx/{tmp_path}"
    with pytest.raises(amlx.ModelNotFoundError):
        amlx.MlxLlm(model=f"mlx/{tmp_path / 'missing'}")


async def test_thoughts_become_thought_parts(tiny_model: str) -> None:
    agent = LlmAgent(name="local", model=_scripts("<think>Paris, surely.</think>It is Paris."))
    (answer,), _, _ = await _run(agent, "Capital of France?")
    assert answer.content is not None
    assert answer.content.parts == [
        types.Part(text="Paris, surely.", thought=True),
        types.Part(text="It is Paris."),
    ]


async def test_streamed_text_never_shows_the_start_of_a_stop_sequence(tiny_model: str) -> None:
    model = _scripts("Hi STO and STOP more")
    agent = LlmAgent(
        name="local",
        model=model,
        generate_content_config=types.GenerateContentConfig(stop_sequences=["STOP"]),
    )
    events, _, _ = await _run(agent, "Say it", streaming=True)
    partials = [_text(e.content) or "" for e in events if e.partial]
    # "STOP" is several tokens: "ST" and "STO" are held back until they cannot be a stop.
    assert "".join(partials) == "Hi STO and "
    assert not any(p.endswith(("S", "ST", "STO")) for p in partials[:-1])
    assert _text(events[-1].content) == "Hi STO and "


async def test_a_stop_sequence_inside_a_tool_call_is_json_not_a_stop(tiny_model: str) -> None:
    model = _scripts(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "STOP"}}\n</tool_call>',
        "Done.",
    )
    agent = LlmAgent(
        name="local",
        model=model,
        tools=[get_weather],
        generate_content_config=types.GenerateContentConfig(stop_sequences=["STOP"]),
    )
    events, _, _ = await _run(agent, "Weather?")
    call_event, response_event, _ = events
    (call,) = call_event.get_function_calls()
    assert call.args == {"city": "STOP"}
    assert [r.response for r in response_event.get_function_responses()] == [get_weather("STOP")]


async def test_concurrent_tool_calling_agents_share_the_model(tiny_model: str) -> None:
    async def one(city: str) -> list[Event]:
        model = _scripts(
            f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}'
            "\n</tool_call>",
            f"It is sunny in {city}.",
        )
        agent = LlmAgent(name="local", model=model, tools=[get_weather])
        events, _, _ = await _run(agent, f"Weather in {city}?", streaming=True)
        return [e for e in events if not e.partial]

    runs = await asyncio.gather(*(one(c) for c in ("Paris", "Oslo", "Rome")))
    for city, (call_event, response_event, answer) in zip(
        ("Paris", "Oslo", "Rome"), runs, strict=True
    ):
        (call,) = call_event.get_function_calls()
        assert call.args == {"city": city}
        assert [r.response for r in response_event.get_function_responses()] == [get_weather(city)]
        assert answer.content is not None
        assert answer.content.parts == [types.Part(text=f"It is sunny in {city}.")]
