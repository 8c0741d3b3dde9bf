"""KV caches of past prompts, reused by the longest matching prefix of token ids.

Identity is the tokens themselves, not a session id: the KV cache of a token sequence is a
function of those tokens (and the model) alone, so an entry whose tokens are a prefix of a
new prompt is correct for it whoever asked, and nothing an ADK request carries could make
reuse any more correct. Matching on tokens also handles, with no special case, everything a
session id would need rules for: the next turn of a chat or tool step (the new prompt
extends the last one), a rollback or an edited history (the prompts diverge: the longest
common prefix is reused), a cancelled turn (only what ADK stored comes back in the next
prompt) and several sessions sharing a system prompt.

Entries are bounded in bytes, least recently used first out. A fetched entry is trimmed
to the match on a shallow copy, and merging it into a batch copies its arrays: stored
arrays are never written to, so one entry can serve several requests at once.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("adk_cancel.mlx")


def cache_nbytes(cache: list[Any]) -> int:
    """Bytes held by a per-sequence KV cache (known from shapes; nothing is evaluated)."""
    return sum(int(c.nbytes) for c in cache)


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    cache: list[Any]
    nbytes: int
    trimmable: bool
    used: float = field(default_factory=time.monotonic)


class PromptCache:
    """Per-model store of prompt KV caches; worker thread only (no locking)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: list[_Entry] = []
        self.nbytes = 0
        """Bytes held by all entries; at most ``max_bytes`` after every call."""
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def fetch(self, tokens: list[int]) -> tuple[list[Any] | None, int]:
        """The cache of the longest stored prefix of ``tokens`` and its length.

        At least the last token is left out of the match: the model must read it to
        sample the first answer token. The returned cache is a view: merge it (which
        copies), never write into it.
        """
        best: _Entry | None = None
        best_len = 0
        limit = len(tokens) - 1
        for entry in self._entries:
            n = _common_prefix(entry.tokens, tokens, limit)
            # An entry longer than the match must be trimmed to it, which not every
            # cache type can do (a rotating window that wrapped, an SSM state).
            if n > best_len and (n == len(entry.tokens) or entry.trimmable):
                best, best_len = entry, n
        if best is None:
            self.misses += 1
            return None, 0
        self.hits += 1
        best.used = time.monotonic()
        view = [copy.copy(c) for c in best.cache]
        excess = len(best.tokens) - best_len
        if excess:
            for c in view:
                c.trim(excess)
        return view, best_len

    def insert(self, tokens: list[int], cache: list[Any]) -> None:
        """Keep ``cache`` (the KV of exactly ``tokens``), evicting as the bound requires."""
        if not tokens or self.max_bytes <= 0:
            return
        key = tuple(tokens)
        for entry in self._entries:
            if entry.trimmable and entry.tokens[: len(key)] == key:
                entry.used = time.monotonic()  # it already serves every prompt this would
                return
        nbytes = cache_nbytes(cache)
        trimmable = all(c.is_trimmable() for c in cache)
        # An entry that is a prefix of the new one only takes space: the new one serves
        # every prompt the old one did (trimmed to it).
        kept: list[_Entry] = []
        for entry in self._entries:
            subsumed = trimmable and len(entry.tokens) <= len(key)
            if entry.tokens == key or (subsumed and key[: len(entry.tokens)] == entry.tokens):
                self.nbytes -= entry.nbytes
            else:
                kept.append(entry)
        self._entries = kept
        if nbytes > self.max_bytes:
            logger.debug("Prompt cache: %d bytes is over the %d-byte bound", nbytes, self.max_bytes)
            return
        self._entries.append(_Entry(key, cache, nbytes, trimmable))
        self.nbytes += nbytes
        self.trim(self.max_bytes)

    def trim(self, max_bytes: int) -> None:
        """Evict least recently used entries until at most ``max_bytes`` are held."""
        if self.nbytes <= max_bytes:
            return
        self._entries.sort(key=lambda e: e.used)
        while self._entries and self.nbytes > max_bytes:
            self.nbytes -= self._entries.pop(0).nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


def _common_prefix(a: tuple[int, ...], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
