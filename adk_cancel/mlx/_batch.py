"""Continuous batching of one model's generations on the worker thread.

Each step of an :class:`Engine`: every decoding sequence gets its next token from one
batched model call; one chunk of prompt is read for up to ``prefill_batch_size`` new
sequences; sequences whose prompt is read join the batch, finished or cancelled ones
leave it. New requests join while others decode, like ``mlx_lm.server``.

Why not mlx-lm's ``BatchGenerator`` (checked against mlx-lm 0.32.2), though the caches,
samplers and the shape of the step are its: its ``GenerationBatch._step`` queues token n+1
(``mx.async_eval``) before it hands back token n, and ``next()`` returns only after that,
so a sequence removed as soon as ``next()`` returns still has token n+1 computed after its
cancel: two tokens, not one. (``mlx_lm.server`` even runs ``next()`` for up to 0.5 s
between removals.) Its prompt chunks are a fixed ``prefill_step_size`` (2048 tokens: ~7
minutes of SmolLM2 on this CPU), so a cancel during a long prompt waits for that. Here:

- The graph of step n+1 is built while token n is still computing (the Python work
  overlaps, as in mlx-lm), but it is queued only after every sequence's cancel flag was
  checked once token n is read. A sequence cancelled by then leaves before step n+1 is
  queued: at most the token that was in flight finishes after its cancel, and the others
  go on with no token lost or repeated. If the batch changes, the built graph is dropped
  unevaluated and the caches restored (``Rows.snapshot``).
- Prompt chunks are sized from the measured cost per token to take about
  ``prefill_chunk_s``, with the cancel flags checked before each.
- Finished sequences also leave before step n+1: no token is computed for nothing.
- A token is handed on (detokenized, sent to the caller's event loop, which that wakes)
  once step n+1 is queued, so that this work overlaps the step's computation (as in
  mlx-lm's ``generate_step``): ~10% more tokens a second for one session of the tiny
  model. Not for a request with stop sequences: whether its token ends the answer must be
  known before step n+1 is queued. A sequence cancelled in between never gets it.

Prompt caches: a new sequence starts from the longest matching prefix in the model's
:class:`PromptCache`; the KV cache of its prompt is stored when the prompt is read, and
that of prompt and answer when it finishes (stop or length). A cancelled sequence adds
nothing: ADK keeps no words of a cancelled answer, so only the prompt is worth keeping.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ._events import Finish, JobStats
from ._prompt_cache import PromptCache
from ._rows import Rows, batchable
from ._sampling import LogitsProcessor, Sampler, shared_sampler

if TYPE_CHECKING:
    import mlx.core as mx

logger = logging.getLogger("adk_cancel.mlx")

_MAX_PREFILL_CHUNK = 2048
_CLEAR_CACHE_EVERY = 256


def _async_eval(*arrays: Any) -> None:
    """``mx.async_eval``, which MLX's stubs leave untyped."""
    import mlx.core as mx

    async_eval = cast(Callable[..., None], mx.async_eval)
    async_eval(*arrays)


@dataclass(frozen=True)
class ServingOptions:
    """How the worker shares a model between generations (``adk_cancel.mlx.configure``)."""

    completion_batch_size: int = 8
    """Most sequences of one model in flight at once (decoding or reading their prompt);
    more wait in line."""
    prefill_batch_size: int = 4
    """Most prompts read together in one model call."""
    prompt_cache_bytes: int = 512 * 1024 * 1024
    """Bound on the KV caches kept for reuse, per model (0 turns the prompt cache off).
    Sequences being generated hold their own KV caches on top of this."""

    def __post_init__(self) -> None:
        if self.completion_batch_size < 1 or self.prefill_batch_size < 1:
            raise ValueError("batch sizes must be at least 1")
        if self.prompt_cache_bytes < 0:
            raise ValueError("prompt_cache_bytes must be 0 (off) or more")


@dataclass(eq=False)
class Sequence:
    """One generation as the engine sees it; the callbacks run on the worker thread."""

    stats: JobStats
    prompt: list[int]
    max_tokens: int
    eos: frozenset[int]
    sampler: Sampler
    processors: list[LogitsProcessor]
    prefill_chunk_s: float
    should_stop: Callable[[], bool]
    emit: Callable[[int], bool]
    """Hand on a generated token; True when a stop sequence ended the output."""
    stops_on_text: bool
    """Whether ``emit`` can end the output (the request has stop sequences): then each
    token is handed on before the next step is queued, else after."""
    done: Callable[[Finish, BaseException | None], None]
    read: int = 0
    """Prompt tokens in the KV cache (from the prompt cache or read here)."""
    generated: list[int] = field(default_factory=list)
    cache: list[Any] | None = None
    """Its own per-layer cache between prompt cache and group, or group and batch."""
    context: Any = None
    """The tokens in the KV cache, as an array, for its logits processors."""


class _RowError(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


@dataclass
class _Step:
    sampled: mx.array
    contexts: list[Any]


class Engine:
    """The batch of one loaded model; worker thread only."""

    def __init__(self, model: Any, options: Callable[[], ServingOptions]) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        self.model = model
        self.options = options
        self.batched = batchable(make_prompt_cache(model))
        self.prompt_cache = PromptCache(options().prompt_cache_bytes)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._group: list[Sequence] = []  # reading their prompt
        self._group_rows = Rows(batched=self.batched)
        self._ready: list[Sequence] = []  # prompt read, joining the batch next step
        self._rows: list[Sequence] = []  # decoding; self._y holds their tokens in flight
        self._batch = Rows(batched=self.batched)
        self._y: mx.array | None = None
        self._pending: list[Any] = []  # caches copied out for the prompt cache, to queue
        self._chunk = 1
        self._steps = 0
        self._given: ServingOptions | None = None
        self._opts = ServingOptions()

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._group or self._ready or self._rows)

    @property
    def sequences(self) -> int:
        return len(self._waiting) + len(self._group) + len(self._ready) + len(self._rows)

    def admit(self, seq: Sequence) -> None:
        self._waiting.append(seq)

    def step(self) -> None:
        """Token n of every decoding sequence, one prompt chunk, then queue step n+1."""
        import mlx.core as mx

        opts = self._serving()

        ahead: _Step | None = None
        snapshot: list[dict[str, Any]] | None = None
        leaving: dict[int, tuple[Finish, BaseException | None]] = {}
        later: list[tuple[Sequence, int]] = []
        if self._rows:
            assert self._y is not None
            # Built ahead unless a row is at its last token: the batch changes for sure.
            if all(len(s.generated) + 1 < s.max_tokens for s in self._rows):
                snapshot = self._batch.snapshot()
                try:
                    ahead = self._forward(self._y, [len(s.generated) + 1 for s in self._rows])
                except _RowError as err:  # dropped; the row leaves with its error below
                    self._batch.restore(snapshot)
                    leaving[err.index] = ("error", err.error)
            tokens = cast(list[int], self._y.tolist())
            now = time.perf_counter()
            for i, (seq, token) in enumerate(zip(self._rows, tokens, strict=True)):
                seq.stats.token_done(now)
                seq.generated.append(token)
                if i not in leaving and (finish := self._finish(seq, token, later)) is not None:
                    leaving[i] = (finish, None)

        self._prefill(opts)

        # The last look before token n+1 is queued: a cancel seen here costs no token.
        for i, seq in enumerate(self._rows):
            if i not in leaving and seq.should_stop():
                leaving[i] = ("cancelled", None)
        joins = self._joins(opts.completion_batch_size - (len(self._rows) - len(leaving)))
        if ahead is not None and not leaving and not joins:
            snapshot = None  # no second handle on the caches while the step runs
            self._commit(ahead)
            self._hand_on(later)
            return
        if ahead is not None and snapshot is not None:
            self._batch.restore(snapshot)
        ahead = snapshot = None

        self._leave(leaving)
        inputs = [s.generated[-1] for s in self._rows] + [s.prompt[-1] for s in joins]
        positions = [len(s.generated) for s in self._rows] + [0] * len(joins)
        self._join(joins)
        while self._rows:
            snapshot = self._batch.snapshot()
            try:
                self._commit(self._forward(mx.array(inputs), positions))
                self._hand_on(later)
                return
            except _RowError as err:
                self._batch.restore(snapshot)
                del inputs[err.index], positions[err.index]
                self._leave({err.index: ("error", err.error)})
        self._y = None
        if self._pending:
            _async_eval(*self._pending)
            self._pending = []

    def _serving(self) -> ServingOptions:
        """The options in force, applied to the prompt cache when they change."""
        given = self.options()
        if given is not self._given:
            self._given = given
            self._opts = given if self.batched else ServingOptions(1, 1, 0)
            self.prompt_cache.max_bytes = self._opts.prompt_cache_bytes
            self.prompt_cache.trim(self._opts.prompt_cache_bytes)
        return self._opts

    def fail_all(self, error: BaseException) -> None:
        """After an error no sequence can be attributed with: end every sequence."""
        seqs = [*self._waiting, *self._group, *self._ready, *self._rows]
        self._waiting.clear()
        self._group, self._ready, self._rows = [], [], []
        self._group_rows = Rows(batched=self.batched)
        self._batch = Rows(batched=self.batched)
        self._y = None
        for seq in seqs:
            self._end(seq, "error", error)

    # -- decoding ----------------------------------------------------------------------

    def _finish(
        self, seq: Sequence, token: int, later: list[tuple[Sequence, int]]
    ) -> Finish | None:
        if seq.should_stop():
            return "cancelled"  # the token is not handed on: it came after the cancel
        if token in seq.eos:
            return "stop"
        last = len(seq.generated) >= seq.max_tokens
        if last or seq.stops_on_text:
            if seq.emit(token):
                return "stop"  # a stop sequence
        else:
            later.append((seq, token))
        return "length" if last else None

    def _hand_on(self, later: list[tuple[Sequence, int]]) -> None:
        """Tokens whose handing on decides nothing, once the next step is queued: the
        detokenizing and the wake of the caller's event loop overlap its computation."""
        for seq, token in later:
            if seq in self._rows:  # not since cancelled or failed
                seq.emit(token)

    def _forward(self, inputs: mx.array, positions: list[int]) -> _Step:
        """The graph of the next token of every row (lazy: nothing runs yet)."""
        import mlx.core as mx

        logits = self.model(inputs[:, None], cache=self._batch.layers)[:, -1, :]
        contexts: list[Any] = [None] * len(self._rows)
        if len(self._rows) == 1:  # no slicing and joining rows back together
            seq = self._rows[0]
            try:
                if seq.processors:
                    ctx = contexts[0] = mx.concatenate([seq.context, inputs.astype(mx.int32)])
                    for processor in seq.processors:
                        logits = processor(ctx, logits)
                logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
                return _Step(seq.sampler(logprobs, positions[0]), contexts)
            except Exception as exc:
                raise _RowError(0, exc) from exc
        if any(s.processors for s in self._rows):
            parts = []
            for e, seq in enumerate(self._rows):
                row = logits[e : e + 1]
                if seq.processors:
                    # The whole context, as mlx-lm's generate_step passes it.
                    ctx = mx.concatenate([seq.context, inputs[e : e + 1].astype(mx.int32)])
                    contexts[e] = ctx
                    try:
                        for processor in seq.processors:
                            row = processor(ctx, row)
                    except Exception as exc:
                        raise _RowError(e, exc) from exc
                parts.append(row)
            logits = mx.concatenate(parts, axis=0)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        shared = shared_sampler([s.sampler for s in self._rows])
        if shared is not None:
            return _Step(shared(logprobs), contexts)
        sampled = []
        for e, seq in enumerate(self._rows):
            try:
                sampled.append(seq.sampler(logprobs[e : e + 1], positions[e]))
            except Exception as exc:
                raise _RowError(e, exc) from exc
        return _Step(mx.concatenate(sampled), contexts)

    def _commit(self, step: _Step) -> None:
        import mlx.core as mx

        self._y = step.sampled
        queued: list[Any] = [step.sampled]
        for seq, ctx in zip(self._rows, step.contexts, strict=True):
            if ctx is not None:
                seq.context = ctx
                queued.append(ctx)
            seq.stats.decode_batch_max = max(seq.stats.decode_batch_max, len(self._rows))
        # The prompt-cache copies first: they read the caches as they are before this step.
        _async_eval(*self._pending, *queued)
        self._pending = []
        self._steps += 1
        if self._steps % _CLEAR_CACHE_EVERY == 0:
            mx.clear_cache()

    def _leave(self, leaving: dict[int, tuple[Finish, BaseException | None]]) -> None:
        if not leaving:
            return
        for i in sorted(leaving):
            seq, (finish, _) = self._rows[i], leaving[i]
            if finish in ("stop", "length") and self.batched and self.prompt_cache.max_bytes:
                # Everything but the last token, which was never fed back to the model.
                copied = self._batch.extract(i)
                self.prompt_cache.insert(seq.prompt + seq.generated[:-1], copied)
                self._pending.extend(c.state for c in copied)
        kept = [i for i in range(len(self._rows)) if i not in leaving]
        gone = [(self._rows[i], *leaving[i]) for i in sorted(leaving)]
        self._batch.keep(kept)
        self._rows = [self._rows[i] for i in kept]
        for seq, finish, error in gone:
            self._end(seq, finish, error)

    def _joins(self, room: int) -> list[Sequence]:
        joins: list[Sequence] = []
        for seq in list(self._ready):
            if seq.should_stop():
                self._ready.remove(seq)
                self._end(seq, "cancelled", None)
            elif len(joins) < room:
                self._ready.remove(seq)
                joins.append(seq)
        return joins

    def _join(self, joins: list[Sequence]) -> None:
        import mlx.core as mx

        if not joins:
            return
        self._batch.add([s.cache for s in joins if s.cache is not None])
        for seq in joins:
            seq.cache = None
            seq.stats.prefill_tokens += 1  # its last prompt token is read with the batch
            if seq.processors:
                seq.context = mx.array(seq.prompt[:-1], dtype=mx.int32)
        self._rows.extend(joins)

    def _end(self, seq: Sequence, finish: Finish, error: BaseException | None) -> None:
        seq.stats.stopped_at = time.perf_counter()
        seq.done(finish, error)

    # -- reading prompts ----------------------------------------------------------------

    def _prefill(self, opts: ServingOptions) -> None:
        """Admit waiting sequences and read one chunk of the group's prompts."""
        if not self._waiting and not self._group:
            return
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        for seq in [s for s in self._waiting if s.should_stop()]:
            self._waiting.remove(seq)
            self._end(seq, "cancelled", None)
        stopped = [i for i, s in enumerate(self._group) if s.should_stop()]
        if stopped:
            self._group_rows.keep([i for i in range(len(self._group)) if i not in stopped])
            for seq in [self._group[i] for i in stopped]:
                self._end(seq, "cancelled", None)
            self._group = [s for i, s in enumerate(self._group) if i not in stopped]

        in_flight = len(self._rows) + len(self._group) + len(self._ready)
        room = min(
            opts.prefill_batch_size - len(self._group), opts.completion_batch_size - in_flight
        )
        newcomers: list[Sequence] = []
        while room > 0 and self._waiting:
            seq = self._waiting.popleft()
            room -= 1
            view, hit = None, 0
            if self.batched and opts.prompt_cache_bytes:
                view, hit = self.prompt_cache.fetch(seq.prompt)
            seq.cache = view if view is not None else make_prompt_cache(self.model)
            seq.read = seq.stats.cached_tokens = hit
            if len(seq.prompt) - 1 - seq.read > 0:
                newcomers.append(seq)
            else:
                self._ready.append(seq)  # all but its last token came from the cache
        self._group_rows.add([s.cache for s in newcomers if s.cache is not None])
        for seq in newcomers:
            seq.cache = None
        self._group.extend(newcomers)
        if not self._group:
            return

        left = min(len(s.prompt) - 1 - s.read for s in self._group)
        n = max(1, min(self._chunk, left, _MAX_PREFILL_CHUNK))
        rows = len(self._group)
        chunk = mx.array([s.prompt[s.read : s.read + n] for s in self._group])
        began = time.perf_counter()
        self.model(chunk, cache=self._group_rows.layers)
        mx.eval([c.state for c in self._group_rows.layers or ()])
        took = time.perf_counter() - began
        for seq in self._group:
            seq.read += n
            seq.stats.prefill_tokens += n
            seq.stats.prefill_chunks += 1
            seq.stats.max_prefill_chunk_s = max(seq.stats.max_prefill_chunk_s, took)
        # Next chunk: about prefill_chunk_s at the cost per token just measured, growing
        # at most 4x a chunk (the first chunks of a model are dominated by overhead).
        per_token = took / (n * rows)
        target = min(s.prefill_chunk_s for s in self._group) / (per_token * rows)
        self._chunk = max(1, min(int(target), n * 4, _MAX_PREFILL_CHUNK))
        if self._steps and self._steps % _CLEAR_CACHE_EVERY == 0:
            mx.clear_cache()

        read = [i for i, s in enumerate(self._group) if len(s.prompt) - 1 - s.read == 0]
        for i in read:
            seq = self._group[i]
            seq.cache = self._group_rows.extract(i)
            if self.batched and opts.prompt_cache_bytes:
                self.prompt_cache.insert(seq.prompt[: seq.read], seq.cache)
            self._ready.append(seq)
        if read:
            self._group_rows.keep([i for i in range(len(self._group)) if i not in read])
            self._group = [s for i, s in enumerate(self._group) if i not in read]
