"""The KV caches of sequences computed together (a prefill group or the decode batch).

Built on mlx-lm's batch caches (``mlx_lm/models/cache.py``): a per-sequence cache's
``merge`` makes a left-padded batch cache, ``extend`` adds rows, ``filter`` drops rows
and ``extract`` copies one row out as a per-sequence cache again. A model whose caches
cannot be merged (``merge`` missing, as ``mlx_lm.server`` also checks) is served one
sequence at a time on its own caches.

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
        """What the model is called with (``cache=``); ``None`` while there are no rows."""
        self.size = 0

    def add(self, caches: list[list[Any]]) -> None:
        """Append one row per per-sequence cache in ``caches`` (which are only read)."""
        if not caches:
            return
        if not self.batched:
            if self.size or len(caches) > 1:
                raise RuntimeError("a model whose caches do not batch runs one sequence")
            self.layers, self.size = caches[0], 1
            return
        merged = [type(layer[0]).merge(list(layer)) for layer in zip(*caches, strict=True)]
        if self.layers is None:
            self.layers = merged
        else:
            for mine, theirs in zip(self.layers, merged, strict=True):
                mine.extend(theirs)
        self.size += len(caches)

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices`` (ascending), in that order."""
        if len(indices) == self.size:
            return
        if not indices:
            self.layers, self.size = None, 0
            return
        assert self.layers is not None and self.batched
        for layer in self.layers:
            layer.filter(indices)
        self.size = len(indices)

    def extract(self, index: int) -> list[Any]:
        """A per-sequence copy of row ``index`` (lazy until evaluated)."""
        assert self.layers is not None
        if not self.batched:
            return self.layers
        return [layer.extract(index) for layer in self.layers]

    def snapshot(self) -> list[dict[str, Any]]:
        """The caches' state now. ``copy.copy`` of an MLX array is a second handle on the
        same graph node, which a later in-place write (``keys[...] = x`` rebinds only the
        handle written through) leaves as it is."""
        return [{k: _handle(v) for k, v in vars(c).items()} for c in self.layers or ()]

    def restore(self, snapshot: list[dict[str, Any]]) -> None:
        for layer, state in zip(self.layers or (), snapshot, strict=True):
            vars(layer).update(state)


def _handle(value: Any) -> Any:
    if type(value).__module__ == "mlx.core":
        return copy.copy(value)
    # Lists of arrays (an SSM cache's state) are written into by index.
    if isinstance(value, list):
        return [_handle(v) for v in value]
    return value
