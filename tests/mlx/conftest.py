"""Fixtures for the MLX adapter tests: a private model cache and the tiny test model.

Every test here runs real MLX on the CPU (no mocks). The whole directory is skipped
when the ``mlx`` extra is not installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mlx.core", reason="needs the mlx extra: pip install 'adk-cancel[mlx]'")
pytest.importorskip("mlx_lm", reason="needs the mlx extra: pip install 'adk-cancel[mlx]'")

import adk_cancel.mlx as amlx

TINY = "mlx/tiny-random"


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh cache for the session, so tests never touch ~/.cache and build the tiny
    model exactly as a first-time user would (on the worker thread, on first use)."""
    root = tmp_path_factory.mktemp("models")
    previous = os.environ.get(amlx.CACHE_ENV)
    os.environ[amlx.CACHE_ENV] = str(root)
    try:
        yield root
    finally:
        # Stop the worker while the cache still exists, then restore the environment.
        assert amlx.shutdown(timeout=30)
        if previous is None:
            os.environ.pop(amlx.CACHE_ENV, None)
        else:
            os.environ[amlx.CACHE_ENV] = previous


@pytest.fixture(scope="session")
def tiny_model(model_cache: Path) -> str:
    """The tiny model's name, prepared and loaded on the worker."""
    amlx.MlxLlm(model=TINY).preload().result(timeout=60)
    return TINY


@pytest.fixture
def worker(tiny_model: str) -> amlx.MlxWorker:
    """The process's worker, idle before the test starts."""
    w = amlx.get_worker()
    assert w.idle.wait(10), "a previous test left the MLX worker busy"
    return w


AGENTS = Path(__file__).resolve().parent / "agents"
# ADK's agent loader imports agents by directory name: put ours on the path so tests and
# the server share the very module (and its TALKING event).
if str(AGENTS) not in sys.path:
    sys.path.insert(0, str(AGENTS))
