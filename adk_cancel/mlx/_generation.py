"""One chat completion as a worker job: its prompt, its place in the batch, its text.

The job renders the prompt with the model's chat template on the worker thread, builds
its sampler and logits processors, and hands a :class:`~._batch.Sequence` to its model's
batch (``_batch.py``), which calls back with each token and with the end. Tokens become
text here: detokenized, split into answer, thoughts and tool calls (``TextRouter``), and
sent to the event loop through the job's :class:`Channel`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ._batch import Sequence
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
from ._loaded import LoadedModel
from ._prompt import ChatRequest, TextRouter
from ._sampling import LogitsProcessorFactory, make_processors, make_sampler
from ._worker import Job, MlxWorker


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
        """Set on the worker once its model is loaded: from then on the job ends within a
        step of a cancel and sends an outcome however it ends (worth waiting for)."""
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

    def start(self, worker: MlxWorker) -> bool:
        try:
            loaded = worker.loaded(self.stats.model)
            # Set before the cancel check, as the caller cancels before it reads the flag:
            # one of the two sees the other, so a caller that does not wait (the model was
            # still loading) finds the job ended here, and one that waits gets an outcome.
            self.generating = True
            if self.should_stop():
                self._end("cancelled", None)
                return True
            prompt = loaded.render(self.request)
            self.stats.prompt_tokens = len(prompt)
            opts = self.request.sampling
            tokenizer = loaded.tokenizer
            sampler = make_sampler(opts)
            processors = make_processors(opts, self.logits_processor_factory, tokenizer)
        except Exception as exc:
            self._end("error", exc)
            return True
        emitter = _Emitter(self, loaded)

        def done(finish: Finish, error: BaseException | None) -> None:
            if finish in ("stop", "length"):
                emitter.flush()
            self._end(finish, error)
            worker.complete(self)

        loaded.engine.admit(
            Sequence(
                stats=self.stats,
                prompt=prompt,
                max_tokens=opts.max_tokens,
                eos=frozenset(tokenizer.eos_token_ids),
                sampler=sampler,
                processors=processors,
                prefill_chunk_s=self.prefill_chunk_s,
                should_stop=self.should_stop,
                emit=emitter.add,
                stops_on_text=bool(opts.stop),
                done=done,
            )
        )
        return False

    def _end(self, finish: Finish, error: BaseException | None) -> None:
        if self.stats.stopped_at is None:
            self.stats.stopped_at = time.perf_counter()
        self.stats.finish = finish
        self.stats.cancel_requested_at = self.cancel_signal.requested_at
        self._outcome = (
            Failed(error, self.stats) if error is not None else Finished(finish, self.stats)
        )


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
