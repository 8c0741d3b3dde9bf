"""How one request's next token is chosen: its sampler and its logits processors.

The types are MLX-free so that the test tooling in :mod:`adk_cancel.mlx.testing`, the
model adapter and the worker can name them without importing one another; building a
sampler imports MLX (worker thread only).

Samplers take a position: in a batch, several requests sample in one step, so a request
with a ``seed`` cannot use MLX's global random state (``mx.random.seed`` would reseed the
others, and who else is in the batch would change its draws). Its key is derived from
(seed, position of the token) instead, so the same seed gives the same answer however the
batch around it comes and goes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlx.core as mx

    from ._prompt import SamplingOptions

LogitsProcessor = Callable[[Any, Any], Any]
"""``(tokens so far, logits) -> logits``, as in mlx-lm; typed loosely so that pydantic
models can hold one without importing MLX. ``tokens`` is the whole context: the prompt,
then one more token per step."""

LogitsProcessorFactory = Callable[[Any], Sequence[LogitsProcessor]]
"""Called with the mlx-lm tokenizer once per generation; returns fresh processors."""

Sampler = Callable[["mx.array", int], "mx.array"]
"""``(log-probabilities [rows, vocab], position of the token) -> token ids [rows]``."""

_KEY_STRIDE = 1_000_003


def _unseeded(sample: Callable[[mx.array], mx.array]) -> Sampler:
    def sampler(logprobs: mx.array, position: int) -> mx.array:
        return sample(logprobs)

    # Identity per mlx-lm sampler function: rows sharing one sample in one call.
    sampler.shared = sample  # type: ignore[attr-defined]
    return sampler


_GREEDY: Sampler | None = None


def make_sampler(opts: SamplingOptions) -> Sampler:
    """The request's sampler: mlx-lm's ``make_sampler``, keyed per token for a seed."""
    global _GREEDY
    from mlx_lm import sample_utils

    if opts.temperature == 0:
        # One shared object: a batch whose rows all decode greedily samples in one call.
        if _GREEDY is None:
            _GREEDY = _unseeded(sample_utils.greedy_sampler)
        return _GREEDY
    if opts.seed is None:
        return _unseeded(
            sample_utils.make_sampler(opts.temperature, top_p=opts.top_p, top_k=opts.top_k)
        )
    return _keyed_sampler(opts)


def _keyed_sampler(opts: SamplingOptions) -> Sampler:
    import mlx.core as mx
    from mlx_lm import sample_utils

    seed, temp = int(opts.seed or 0), opts.temperature
    filters: list[Callable[[mx.array], mx.array]] = []
    # The same filters, in the same order, as mlx-lm's make_sampler.
    if 0 < opts.top_p < 1.0:
        filters.append(lambda x: sample_utils.apply_top_p(x, opts.top_p))
    if opts.top_k > 0:
        filters.append(lambda x: sample_utils.apply_top_k(x, opts.top_k))

    def sampler(logprobs: mx.array, position: int) -> mx.array:
        for apply in filters:
            logprobs = apply(logprobs)
        key = mx.random.key((seed * _KEY_STRIDE + position) % (1 << 63))
        token: mx.array = mx.random.categorical(logprobs * (1.0 / temp), key=key)
        return token

    return sampler


def shared_sampler(samplers: Sequence[Sampler]) -> Callable[[mx.array], mx.array] | None:
    """The one mlx-lm sampler function all of ``samplers`` wrap, if there is one."""
    first = getattr(samplers[0], "shared", None) if samplers else None
    if first is None or any(getattr(s, "shared", None) is not first for s in samplers):
        return None
    return first  # type: ignore[no-any-return]


def make_processors(
    opts: SamplingOptions, factory: LogitsProcessorFactory | None, tokenizer: Any
) -> list[LogitsProcessor]:
    """The request's logits processors: its penalties, then the caller's own."""
    from mlx_lm.sample_utils import make_logits_processors

    processors: list[LogitsProcessor] = list(
        make_logits_processors(
            presence_penalty=opts.presence_penalty, frequency_penalty=opts.frequency_penalty
        )
    )
    if factory is not None:
        processors.extend(factory(tokenizer))
    return processors
