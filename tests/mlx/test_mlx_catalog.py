"""Model names, the cache, atomic preparation, and the `adk-cancel models` commands."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import adk_cancel.mlx as amlx
from adk_cancel.mlx.cli import models


def test_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(amlx.CACHE_ENV, str(tmp_path / "mine"))
    assert amlx.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(amlx.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert amlx.cache_dir() == tmp_path / "xdg" / "adk-cancel" / "models"


def test_model_names_resolve_to_directories(tmp_path: Path, model_cache: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert amlx.resolve(f"mlx/{tmp_path}") == tmp_path.resolve()
    with pytest.raises(amlx.ModelNotFoundError, match="never downloaded"):
        amlx.resolve("mlx/mlx-community/SmolLM2-135M-Instruct-8bit")


def test_a_gguf_file_that_is_not_llama_is_refused(tmp_path: Path) -> None:
    import mlx.core as mx

    gguf = tmp_path / "mamba.gguf"
    mx.save_gguf(str(gguf), {"blk.0.ssm_conv1d.weight": mx.zeros((4, 4))})
    with pytest.raises(amlx.GgufConversionError, match="llama"):
        amlx.convert_gguf(gguf, tmp_path)
    with pytest.raises(FileNotFoundError):
        amlx.convert_gguf(tmp_path / "missing.gguf", tmp_path)


def test_tiny_model_is_reproducible_bit_for_bit(tmp_path: Path) -> None:
    first = amlx.prepare("tiny-random", root=tmp_path / "a")
    second = amlx.prepare("tiny-random", root=tmp_path / "b")
    files = sorted(p.name for p in first.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    size = (first / "model.safetensors").stat().st_size
    assert size < 1_000_000


def test_prepare_is_atomic_and_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    original = amlx.KNOWN_MODELS["tiny-random"]

    def failing(out: Path, progress: object) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setitem(
            amlx.KNOWN_MODELS, "tiny-random", dataclasses.replace(original, build=failing)
        )
        with pytest.raises(RuntimeError, match="disk full"):
            amlx.prepare("tiny-random", root=tmp_path)
    # The half-written staging directory is gone; the model is not there.
    assert not calls[0].exists()
    assert not (tmp_path / original.dirname).exists()

    path = amlx.prepare("tiny-random", root=tmp_path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert amlx.prepare("tiny-random", root=tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    forced = amlx.prepare("tiny-random", root=tmp_path, force=True)
    assert forced == path and (path / "model.safetensors").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".{original.dirname}.lock",
        original.dirname,
    ]


def test_cli_prepare_and_list(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(models, ["prepare", "tiny-random", "--cache_dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "tiny-random-qwen2-v2" and (path / "config.json").is_file()

    listed = runner.invoke(models, ["list", "--cache_dir", str(tmp_path)])
    assert listed.exit_code == 0
    assert "mlx/tiny-random\n" in listed.output and str(path) in listed.output
    assert "mlx/smollm2-135m" in listed.output

    unknown = runner.invoke(models, ["prepare", "gpt-17", "--cache_dir", str(tmp_path)])
    assert unknown.exit_code != 0 and "Unknown model 'gpt-17'" in unknown.output


def test_importing_the_package_loads_no_mlx_and_registers_the_model() -> None:
    code = (
        "import sys, adk_cancel, adk_cancel.mlx\n"
        "from google.adk.models.registry import LLMRegistry\n"
        "heavy = [m for m in ('mlx', 'mlx.core', 'mlx_lm', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert LLMRegistry.resolve('mlx/smollm2-135m') is adk_cancel.mlx.MlxLlm\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
