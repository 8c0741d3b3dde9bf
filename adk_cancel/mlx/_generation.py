"""One chat completion on the worker thread: prompt, prefill, decode loop, text routing.

Cancellation: every job carries a cancel signal. The decode loop checks it after every
token, before it queues the next one, and the prefill between chunks sized to take about
``prefill_chunk_s``; on a stop the loop waits for what is still queued on the generation
stream (``mx.synchronize``), so "stopped" means idle: at most the token in flight is
finished after a cancel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ._events import (
    Channel,
    Event,
    Failed,
    Finish,
    Finished,
    MalformedToolCall,
    TextPiece,
    ToolCall,
)
from ._prompt import ChatRequest, TextRouter
from ._sampling import LogitsProcessorFactory
from ._worker import Job, LoadedModel, MlxWorker

if TYPE_CHECKING:
    import mlx.core as mx

_MAX_PREFILL_CHUNK = 2048
_CLEAR_CACHE_EVERY = 256


def _async_eval(*arrays: mx.array) -> None:
    """``mx.async_eval``, which MLX's stubs leave untyped."""
    import mlx.core as mx

    async_eval = cast(Callable[..., None], mx.async_eval)
    async_eval(*arrays)


class _Stopped(Exception):
    """Raised inside a job when its cancel signal is seen."""


class GenerationJob(Job):
    """One chat completion, streamed to a :class:`Channel`."""

    def __init__(
        self,
        *,
        model: str,
        request: ChatRequest,
        channel: Channel,
        abort_probe: Callable[[], bool] | None = None,
        logits_processor_factory: LogitsProcessorFactory | None = None,
        prefill_chunk_s: float = 0.025,
        stream: bool = True,
    ) -> None:
        super().__init__(model, abort_probe)
        self.request = request
        self.channel = channel
        self.stream = stream
        self.logits_processor_factory = logits_processor_factory
        self.prefill_chunk_s = prefill_chunk_s
        self.generating = False
        """Set on the worker once the model is loaded and the prompt starts."""
        self._outcome: Finished | Failed | None = None

    def _send(self, event: Event) -> None:
        # A caller that does not stream only needs the pieces with the outcome: waking
        # its event loop for each token would just compete with decoding for the GIL.
        wake = self.stream or isinstance(event, Finished | Failed)
        if not self.channel.put(event, wake=wake):
            self.cancel()

    def skip(self, error: BaseException | None) -> None:
        super().skip(error)
        self._outcome = Failed(error, self.stats) if error else Finished("cancelled", self.stats)

    def deliver(self) -> None:
        if self._outcome is not None:
            self._send(self._outcome)

    def run(self, worker: MlxWorker) -> None:
        try:
            loaded = worker.loaded(self.stats.model)
            if self.should_stop():
                raise _Stopped
            prompt = loaded.render(self.request)
            self.stats.prompt_tokens = len(prompt)
            self.generating = True
            finish = self._generate(loaded, prompt)
        except _Stopped:
            finish = "cancelled"
            if self.stats.stopped_at is None:  # stopped before the prompt started
                self.stats.stopped_at = time.perf_counter()
        except Exception as exc:
            self.stats.finish = "error"
            self.stats.stopped_at = time.perf_counter()
            self._outcome = Failed(exc, self.stats)
            return
        self.stats.finish = finish
        self.stats.cancel_requested_at = self.cancel_signal.requested_at
        self._outcome = Finished(finish, self.stats)

    def _generate(self, loaded: LoadedModel, prompt_ids: list[int]) -> Finish:
        import mlx.core as mx
        from mlx_lm.generate import generation_stream
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        model, tokenizer = loaded.model, loaded.tokenizer
        opts = self.request.sampling
        if opts.seed is not None:
            mx.random.seed(opts.seed)
        sampler = make_sampler(opts.temperature, top_p=opts.top_p, top_k=opts.top_k)
        processors = list(
            make_logits_processors(
                presence_penalty=opts.presence_penalty, frequency_penalty=opts.frequency_penalty
            )
        )
        if self.logits_processor_factory is not None:
            processors.extend(self.logits_processor_factory(tokenizer))
        cache = make_prompt_cache(model)
        prompt = mx.array(prompt_ids)
        history = prompt
        stats = self.stats

        def step(tokens: mx.array, extends_history: bool) -> mx.array:
            nonlocal history
            logits = model(tokens[None], cache=cache)[:, -1, :]
            if processors:
                if extends_history:
                    history = mx.concatenate([history, tokens])
                for processor in processors:
                    logits = processor(history, logits)
            logprobs = logits - mx.logsumexp(logits, keepdims=True)
            sampled: mx.array = sampler(logprobs)
            return sampled

        emitter = _Emitter(self, loaded)
        try:
            with mx.stream(generation_stream):
                done = self._prefill(model, cache, prompt)
                y = step(prompt[done:], extends_history=False)
                _async_eval(y)
                finish = self._decode(y, step, emitter, tokenizer, opts.max_tokens)
        finally:
            # Whatever ended the loop, computation may still be queued (the token in
            # flight, a prefill chunk): wait for it, so that stopped means idle.
            mx.synchronize(generation_stream)
            stats.stopped_at = time.perf_counter()
        if finish != "cancelled":
            emitter.flush()
        return finish

    def _prefill(self, model: Any, cache: Any, prompt: mx.array) -> int:
        """Run all but the last prompt token through the model; returns how many ran.

        Chunks are sized from the measured cost per token so that each takes about
        ``prefill_chunk_s``: the cancel check between chunks then stops a long prompt
        within that time whether a token costs 0.1 ms (tiny model) or 200 ms (SmolLM2
        on a CPU), without slowing fast models down with tiny chunks.
        """
        import mlx.core as mx

        total = int(prompt.shape[0])
        done = 0
        chunk = 1
        while total - done > 1:
            if self.should_stop():
                raise _Stopped
            n = min(chunk, total - done - 1)
            began = time.perf_counter()
            model(prompt[done : done + n][None], cache=cache)
            mx.eval([c.state for c in cache])
            took = time.perf_counter() - began
            per_token = took / n
            done += n
            self.stats.prefill_chunks += 1
            self.stats.prefill_tokens = done
            self.stats.max_prefill_chunk_s = max(self.stats.max_prefill_chunk_s, took)
            target = int(self.prefill_chunk_s / per_token) if per_token > 0 else n * 4
            chunk = max(1, min(target, n * 4, _MAX_PREFILL_CHUNK))
        if self.stats.prefill_chunks:
            mx.clear_cache()
        return done

    def _decode(
        self,
        y: mx.array,
        step: Callable[[mx.array, bool], mx.array],
        emitter: _Emitter,
        tokenizer: Any,
        max_tokens: int,
    ) -> Finish:
        """Sample until end of turn, a stop sequence, max tokens, or a cancel.

        This loop deliberately mirrors mlx-lm's ``generate_step`` (``mlx_lm/generate.py``,
        checked against mlx-lm 0.32.2): the same model call, logits processors over the
        whole context, ``logits - logsumexp`` and sampler, and the same pipelining, in
        which the graph of token n+1 is built while token n is still computing. One
        thing differs, on purpose: mlx-lm queues token n+1 (``mx.async_eval``) before it
        reads token n, so a stop seen at token n still has token n+1 to compute. Here
        token n+1 is queued only after the cancel check that follows token n, which is
        what guarantees "within one token": a cancel leaves at most the token in flight
        to finish, and since the graph is still built ahead the decode speed stays that
        of mlx-lm.
        """
        import mlx.core as mx

        stats = self.stats
        eos = set(tokenizer.eos_token_ids)
        while True:
            # Lazy: nothing of the next token runs until _async_eval below.
            upcoming = step(y, True) if stats.generated_tokens + 1 < max_tokens else None
            token = cast(int, y.item())
            stats.token_done(time.perf_counter())
            if self.should_stop():
                return "cancelled"
            if token in eos:
                return "stop"
            if upcoming is None:
                emitter.add(token)
                return "length"
            _async_eval(upcoming)
            if emitter.add(token):
                return "stop"  # a stop sequence; the queued token is waited for, unused
            if stats.generated_tokens % _CLEAR_CACHE_EVERY == 0:
                mx.clear_cache()
            y = upcoming


class _Emitter:
    """Detokenizes, routes text (answer, thought, tool call) and sends events."""

    def __init__(self, job: GenerationJob, loaded: LoadedModel) -> None:
        tokenizer = loaded.tokenizer
        self._job = job
        self._tools = job.request.tools
        self._parser = tokenizer.tool_parser if tokenizer.has_tool_calling else None
        self._detok = tokenizer.detokenizer
        self._router = TextRouter(
            tool_markers=(tokenizer.tool_call_start, tokenizer.tool_call_end)
            if self._parser is not None and self._tools
            else None,
            think_markers=(tokenizer.think_start, tokenizer.think_end)
            if tokenizer.has_thinking
            else None,
            stop=job.request.sampling.stop,
        )
        self._tool_text: list[str] = []
        self._markers = (tokenizer.tool_call_start or "", tokenizer.tool_call_end or "")

    def add(self, token: int) -> bool:
        """Feed one token; True when a stop sequence ended the output."""
        self._detok.add_token(token)
        segment: str = self._detok.last_segment
        if segment:
            self._route(self._router.feed(segment))
        return self._router.stopped

    def flush(self) -> None:
        self._detok.finalize()
        segment: str = self._detok.last_segment
        pieces = self._router.feed(segment) if segment else []
        self._route(pieces + self._router.finish())

    def _route(self, pieces: list[tuple[str, str]]) -> None:
        for kind, text in pieces:
            if kind == TextRouter.ANSWER:
                self._job._send(TextPiece(text))
            elif kind == TextRouter.THOUGHT:
                self._job._send(TextPiece(text, thought=True))
            elif kind == TextRouter.TOOL:
                self._tool_text.append(text)
            elif kind == "tool_end":
                self._tool_call("".join(self._tool_text))
                self._tool_text.clear()

    def _tool_call(self, raw: str) -> None:
        assert self._parser is not None
        try:
            parsed = self._parser(raw, self._tools)
            calls = parsed if isinstance(parsed, list) else [parsed]
            events = [ToolCall(str(c["name"]), dict(c.get("arguments") or {})) for c in calls]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            start, end = self._markers
            reason = f"{type(exc).__name__}: {exc}"
            self._job._send(MalformedToolCall(f"{start}{raw}{end}", reason))
            return
        for event in events:
            self._job._send(event)
