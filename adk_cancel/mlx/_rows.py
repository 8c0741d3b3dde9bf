"""The KV caches of sequences computed together (a prefill group or the decode batch).

Several rows are built on mlx-lm's batch caches (``mlx_lm/models/cache.py``): a
per-sequence cache's ``merge`` makes a left-padded batch cache, ``extend`` adds rows,
``filter`` drops rows and ``extract`` copies one row out as a per-sequence cache again. A
model whose caches cannot be merged (``merge`` missing, as ``mlx_lm.server`` also checks)
is served one sequence at a time.

One row is computed on a per-sequence cache of its own, as mlx-lm's ``generate_step``
does, whatever the model: a batch cache keeps the rows' offsets and padding as arrays and
builds a mask from them at every step, which for a single sequence is about 10% more CPU
per token on the tiny model (measured), for bitwise the same logits (checked for the tiny
model and SmolLM2, against a batch of one and a padded batch of two). The caches change
form when a second row joins (merged) and when the batch is down to one row (extracted).

A snapshot lets the decode loop build the next step's graph before it knows whether the
batch changes: building a graph writes the new keys and values into the caches (lazily,
in place), and restoring the snapshot undoes that if the graph is dropped unevaluated.
"""

from __future__ import annotations

import copy
from typing import Any


def batchable(cache: list[Any]) -> bool:
    """Whether sequences with caches like ``cache`` can share a batch."""
    return all(hasattr(c, "merge") for c in cache)


class Rows:
    """Per-layer caches of the rows, in row order; worker thread only."""

    def __init__(self, *, batched: bool) -> None:
        self.batched = batched
        self.layers: list[Any] | None = None
        """What the model is called with (``cache=``); ``None`` while there are no rows,
        per-sequence caches while there is one, batch caches while there are more."""
        self.size = 0

    def add(self, caches: list[list[Any]]) -> None:
        """Append one row per per-sequence cache in ``caches`` (which are only read)."""
        if not caches:
            return
        if self.size + len(caches) == 1:
            # Written into from now on: handles of its own (a prompt-cache view is shared).
            self.layers, self.size = [_own(c) for c in caches[0]], 1
            return
        if not self.batched:
            raise RuntimeError("a model whose caches do not batch runs one sequence")
        rows = [self.layers, *caches] if self.size == 1 else caches
        merged = [type(layer[0]).merge(list(layer)) for layer in zip(*rows, strict=True)]
        if self.size > 1:
            assert self.layers is not None
            for mine, theirs in zip(self.layers, merged, strict=True):
                mine.extend(theirs)
        else:
            self.layers = merged
        self.size += len(caches)

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices`` (ascending), in that order."""
        if len(indices) == self.size:
            return
        if not indices:
            self.layers, self.size = None, 0
            return
        assert self.layers is not None and self.batched
        if len(indices) == 1:
            self.layers = [layer.extract(indices[0]) for layer in self.layers]
        else:
            for layer in self.layers:
                layer.filter(indices)
        self.size = len(indices)

    def extract(self, index: int) -> list[Any]:
        """A per-sequence copy of row ``index`` (lazy until evaluated)."""
        assert self.layers is not None
        if self.size > 1:
            return [layer.extract(index) for layer in self.layers]
        if not self.batched:
            return [_own(c) for c in self.layers]
        # Through a batch of one: its extract copies exactly the tokens held, where the
        # row's own cache has room for up to a step (256 tokens) more.
        return [type(c).merge([c]).extract(0) for c in self.layers]

    def snapshot(self) -> list[dict[str, Any]]:
        """The caches' state now. ``copy.copy`` of an MLX array is a second handle on the
        same graph node, which a later in-place write (``keys[...] = x`` rebinds only the
        handle written through) leaves as it is."""
        return [{k: _handle(v) for k, v in vars(c).items()} for c in self.layers or ()]

    def restore(self, snapshot: list[dict[str, Any]]) -> None:
        for layer, state in zip(self.layers or (), snapshot, strict=True):
            vars(layer).update(state)


def _own(cache: Any) -> Any:
    """A copy of a per-sequence cache whose writes reach nobody else's (no data copied)."""
    mine = copy.copy(cache)
    vars(mine).update({k: _handle(v) for k, v in vars(cache).items()})
    return mine


def _handle(value: Any) -> Any:
    if type(value).__module__ == "mlx.core":
        return copy.copy(value)
    # Lists of arrays (an SSM cache's state) are written into by index.
    if isinstance(value, list | tuple):
        return type(value)(_handle(v) for v in value)
    # Caches made of caches (``CacheList``) write into the inner ones.
    if type(value).__module__.startswith("mlx_lm.models"):
        return _own(value)
    return value
