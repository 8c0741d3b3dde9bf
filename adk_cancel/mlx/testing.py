"""Test tooling for agents on local models: a tiny offline model and exact scripted output.

Public and stable (``adk_cancel.mlx.testing``), so that tests of your own agents can use
what adk-cancel's tests use:

- :data:`TINY_MODEL` (``"mlx/tiny-random"``): a tiny random-weight qwen2 model. It speaks
  nonsense, but it is a real mlx-lm model: the same architecture code, KV cache, chat
  template, tokenizer and tool-call parser as a Qwen2.5 checkpoint, at about 0.1 M
  parameters, built offline in about 2 s the first time it is used (and byte-identical
  on every rebuild). :func:`build_tiny_model` writes it into a directory of your choice.
- :func:`scripted_output`: a logits-processor factory for ``MlxLlm(
  logits_processor_factory=...)`` that makes any model say an exact text, tool calls
  included, by letting only the next token of the script through; with ``None`` it only
  forbids the end-of-turn token, so a model talks until it is stopped or hits its
  ``max_output_tokens``.

Importing this module imports no MLX; the functions do when called.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ._sampling import LogitsProcessor, LogitsProcessorFactory

if TYPE_CHECKING:
    import mlx.core as mx

__all__ = ["TINY_MODEL", "build_tiny_model", "scripted_output"]

TINY_MODEL = "mlx/tiny-random"
"""The model name of the tiny test model, for ``MlxLlm(model=TINY_MODEL)``."""

# With "<think>"/"</think>" in the vocabulary mlx-lm reports the tokenizer as a thinking
# one, so a scripted "<think>...</think>" output exercises the adapter's thought parts.
_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<think>",
    "</think>",
)
_VOCAB_SIZE = 512

_CONFIG: dict[str, Any] = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "vocab_size": _VOCAB_SIZE,
    "max_position_embeddings": 8192,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}

# Qwen2.5's tool-calling template, trimmed of nothing that matters here: mlx-lm picks its
# "json_tools" parser from the "<tool_call>" and "tool_call.name" it contains.
_CHAT_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content }}\
{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\
\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, \
"arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) \
or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}\
{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}\
{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

# Training text for the tokenizer: enough English, JSON and digits that the 512 merges
# cover what the tests and the benchmark send, so prompts tokenize to realistic lengths.
_CORPUS = """\
The capital of France is Paris. The capital of Italy is Rome. The weather in Paris is
sunny and the temperature is 21 degrees. What is the weather like in Tokyo today?
Let me check the weather for you. I will call the tool now. Here is the answer.
You are a helpful assistant. Answer briefly and politely. Thank you for asking!
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
The quick brown fox jumps over the lazy dog while the model generates tokens one by one.
Cancel the request, stop the agent, and keep the event loop responsive at all times.
0 1 2 3 4 5 6 7 8 9 10 20 30 42 100 2024 3.14 -1 true false null
system user assistant tool function call response result error message content
"""


def _tokenizer_json() -> str:
    """A byte-level BPE tokenizer trained on a fixed corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # One sequence per line keeps training independent of thread scheduling.
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    if tokenizer.get_vocab_size() > _VOCAB_SIZE:
        raise RuntimeError("the tiny tokenizer outgrew the model's embedding table")
    return tokenizer.to_str(pretty=True)


def _tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _CONFIG["max_position_embeddings"],
        "additional_special_tokens": [
            t for t in _SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")
        ],
        "chat_template": _CHAT_TEMPLATE,
        "tool_parser_type": "json_tools",
    }


def build_tiny_model(
    out_dir: Path, progress: Callable[[int, int, str], None] | None = None
) -> None:
    """Write the tiny model (config, weights, tokenizer) into the existing ``out_dir``.

    Weights are drawn from a fixed seed per tensor, so the files are identical on every
    build and on every machine with the same MLX version.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2

    report = progress or (lambda done, total, what: None)
    report(0, 3, "building tokenizer")
    tokenizer_json = _tokenizer_json()
    eos_id = json.loads(tokenizer_json)["added_tokens"][_SPECIAL_TOKENS.index("<|im_end|>")]["id"]
    config = {**_CONFIG, "eos_token_id": eos_id}

    report(1, 3, "drawing weights")
    args = cast(qwen2.ModelArgs, qwen2.ModelArgs.from_dict(config))  # type: ignore[no-untyped-call]
    model = qwen2.Model(args)
    params = cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters()))
    weights: dict[str, mx.array] = {}
    for i, (name, param) in enumerate(sorted(params, key=lambda item: item[0])):
        if name.endswith("norm.weight"):
            weights[name] = mx.ones(param.shape, dtype=mx.float32)
        else:
            key = mx.random.key(i)
            weights[name] = 0.02 * mx.random.normal(param.shape, dtype=mx.float32, key=key)

    report(2, 3, "writing files")
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (out_dir / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(_tokenizer_config(), indent=2, sort_keys=True)
    )
    report(3, 3, "done")


def scripted_output(script: str | None, *, then_eos: bool = True) -> LogitsProcessorFactory:
    """A factory of logits processors that make any model say exactly ``script``.

    Each step allows only the next token of the script, then the end-of-turn token (or,
    with ``then_eos=False``, anything but it, so generation runs on until max tokens or
    a cancel). ``script=None`` just forbids the end-of-turn token: a random model then
    talks until it is stopped, which is what cancellation tests need.
    """

    def factory(tokenizer: Any) -> Sequence[LogitsProcessor]:
        import mlx.core as mx

        forced = tokenizer.encode(script, add_special_tokens=False) if script else []
        eos = sorted(tokenizer.eos_token_ids)
        prompt_len: int | None = None

        def processor(tokens: mx.array, logits: mx.array) -> mx.array:
            nonlocal prompt_len
            # The first call sees exactly the prompt; later calls one more token each.
            if prompt_len is None:
                prompt_len = int(tokens.shape[0])
            position = int(tokens.shape[0]) - prompt_len
            if position < len(forced):
                allowed = mx.full(logits.shape, -mx.inf, dtype=logits.dtype)
                allowed[..., forced[position]] = 0.0
                return logits + allowed
            if then_eos and forced:
                allowed = mx.full(logits.shape, -mx.inf, dtype=logits.dtype)
                allowed[..., eos[0]] = 0.0
                return logits + allowed
            banned = mx.zeros(logits.shape, dtype=logits.dtype)
            banned[..., eos] = -mx.inf
            return logits + banned

        return [processor]

    return factory
