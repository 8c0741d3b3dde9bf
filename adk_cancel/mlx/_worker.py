"""The one thread per process that runs MLX: model loading and generation, one job at a time.

Why one long-lived thread: since mlx 0.31.2 a stream belongs to the thread that created
it, so a model must be used where it was loaded; MLX work on a thread that ends without
``mx.clear_streams()`` makes about half of processes abort at exit ("terminate called
without an active exception"); and a thread whose streams were cleared cannot run mlx-lm
again. So the worker starts on first use, serves jobs FIFO, clears its streams exactly
once when it stops (:meth:`MlxWorker.shutdown`, also registered with ``atexit``), and a
later job gets a fresh worker with a fresh thread.

Tokens reach the event loop through a :class:`Channel` (``loop.call_soon_threadsafe``);
the loop never waits on MLX.

Cancellation: every job carries a :class:`CancelSignal`. The decode loop checks it after
every token, before it queues the next one, and the prefill between chunks sized to take
about ``prefill_chunk_s``; on a stop the worker waits for what is still queued on the
generation stream (``mx.synchronize``), so "stopped" means idle: at most the token in
flight is finished after a cancel. A job cancelled while queued is dropped unstarted.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from .._shutdown import on_app_shutdown
from . import _catalog
from ._prompt import ChatRequest, TextRouter

if TYPE_CHECKING:
    import asyncio

    import mlx.core as mx

logger = logging.getLogger("adk_cancel.mlx")

T = TypeVar("T")
# (tokens so far, logits) -> logits, as in mlx-lm; typed loosely so pydantic models can
# hold one without importing MLX.
LogitsProcessor = Callable[[Any, Any], Any]
LogitsProcessorFactory = Callable[[Any], Sequence[LogitsProcessor]]
"""Called with the mlx-lm tokenizer once per generation; returns fresh processors."""

Finish = Literal["stop", "length", "cancelled", "error", "skipped"]

_MAX_PREFILL_CHUNK = 2048
_RECENT_TOKENS = 64
_CLEAR_CACHE_EVERY = 256


def _async_eval(*arrays: mx.array) -> None:
    """``mx.async_eval``, which MLX's stubs leave untyped."""
    import mlx.core as mx

    async_eval = cast(Callable[..., None], mx.async_eval)
    async_eval(*arrays)


class WorkerClosedError(RuntimeError):
    """The MLX worker was shut down while a job waited for it."""


class _Stopped(Exception):
    """Raised inside a job when its cancel signal is seen."""


class CancelSignal:
    """A thread-safe stop flag that remembers when it was first raised."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.requested_at: float | None = None

    def set(self) -> None:
        if self.requested_at is None:
            self.requested_at = time.perf_counter()
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass
class JobStats:
    """What one job did, measured on the worker thread (``time.perf_counter`` clock)."""

    job_id: int
    model: str
    queued_at: float
    started: bool = False
    finish: Finish | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_chunks: int = 0
    prefill_tokens: int = 0
    """Prompt tokens run before the first sampled token (all but the last one)."""
    max_prefill_chunk_s: float = 0.0
    stopped_by: Literal["cancel", "abort"] | None = None
    """What stopped the job early: its caller (task cancelled, generator closed, worker
    shut down) or the bound ADK invocation's abort flag."""
    started_at: float | None = None
    first_token_at: float | None = None
    cancel_requested_at: float | None = None
    stopped_at: float | None = None
    """When the job left the worker with nothing of it still computing."""
    last_token_at: float | None = None
    token_done_at: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_RECENT_TOKENS)
    )
    """When each of the last tokens was computed (bounded: history keeps many jobs)."""

    def token_done(self, at: float) -> None:
        self.token_done_at.append(at)
        self.generated_tokens += 1
        if self.first_token_at is None:
            self.first_token_at = at
        self.last_token_at = at

    @property
    def tokens_after_cancel(self) -> int:
        """Tokens whose computation finished after the cancel was requested."""
        if self.cancel_requested_at is None:
            return 0
        return sum(1 for t in self.token_done_at if t > self.cancel_requested_at)

    @property
    def cancel_to_idle_s(self) -> float | None:
        if self.cancel_requested_at is None or self.stopped_at is None:
            return None
        return max(0.0, self.stopped_at - self.cancel_requested_at)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second after the first one (which includes reading the prompt)."""
        if self.first_token_at is None or self.last_token_at is None:
            return None
        if self.generated_tokens < 2:
            return None
        return (self.generated_tokens - 1) / (self.last_token_at - self.first_token_at)


# Events a generation job sends to the event loop.


@dataclass(frozen=True)
class TextPiece:
    text: str
    thought: bool = False


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class MalformedToolCall:
    raw: str
    reason: str


@dataclass(frozen=True)
class Finished:
    finish: Finish
    stats: JobStats


@dataclass(frozen=True)
class Failed:
    error: BaseException
    stats: JobStats


Event = TextPiece | ToolCall | MalformedToolCall | Finished | Failed


class Channel:
    """Worker-to-event-loop queue that wakes the loop at most once per batch.

    Waking the loop per token would cost a self-pipe write and a GIL hand-over each
    time; when the loop is busy, tokens pile up and are taken in one go instead.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: collections.deque[Event] = collections.deque()
        self._wake_pending = False
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Event, *, wake: bool = True) -> bool:
        """Worker side. False when the loop is gone (nobody will ever read).

        ``wake=False`` only queues the item; it is read with the next woken batch.
        """
        with self._lock:
            self._items.append(item)
            if not wake:
                return not self._loop.is_closed()
            if self._wake_pending:
                return True
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: its consumer no longer exists
            return False
        return True

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> list[Event]:
        """Loop side: every event sent so far, waiting for at least one."""
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class Job:
    """A unit of work for the worker thread."""

    def __init__(self, model: str, abort_probe: Callable[[], bool] | None = None) -> None:
        self.cancel_signal = CancelSignal()
        self.abort_probe = abort_probe
        self.state: Literal["queued", "running", "done"] = "queued"
        self.stats = JobStats(job_id=0, model=model, queued_at=time.perf_counter())

    def should_stop(self) -> bool:
        if self.cancel_signal.is_set():
            return True
        probe = self.abort_probe
        if probe is not None and probe() is True:
            self.stats.stopped_by = "abort"
            self.cancel_signal.set()
            return True
        return False

    def cancel(self) -> None:
        """Stop this job (thread-safe): at its next token, or before it starts."""
        if self.stats.stopped_by is None:
            self.stats.stopped_by = "cancel"
        self.cancel_signal.set()

    def run(self, worker: MlxWorker) -> None:
        """Do the work on the worker thread; the outcome waits for :meth:`deliver`."""
        raise NotImplementedError

    def skip(self, error: BaseException | None) -> None:
        """Called instead of :meth:`run` for a job that never starts."""
        self.stats.finish = "skipped"
        self.stats.cancel_requested_at = self.cancel_signal.requested_at

    def deliver(self) -> None:
        """Hand the outcome to the caller; the worker calls it after recording the job,
        so whoever sees the outcome also sees the job in ``history`` (and ``idle`` set
        if nothing else is queued)."""
        raise NotImplementedError


class CallJob(Job, Generic[T]):
    """Runs a function on the worker thread (benchmarks, tests, warm-up)."""

    def __init__(self, fn: Callable[[MlxWorker], T], model: str = "") -> None:
        super().__init__(model)
        self.fn = fn
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()

        self._result: T | None = None
        self._error: BaseException | None = None

    def run(self, worker: MlxWorker) -> None:
        try:
            self._result = self.fn(worker)
            self.stats.finish = "stop"
        except BaseException as exc:
            self.stats.finish = "error"
            self._error = exc

    def skip(self, error: BaseException | None) -> None:
        super().skip(error)
        self._error = error or concurrent.futures.CancelledError()

    def deliver(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        if self._error is not None:
            self.future.set_exception(self._error)
        else:
            self.future.set_result(cast(T, self._result))


@dataclass
class LoadedModel:
    """A model and its tokenizer, owned by the worker thread."""

    name: str
    path: Path
    model: Any
    tokenizer: Any
    warned_no_tools: bool = False

    def render(self, request: ChatRequest) -> list[int]:
        """The prompt token ids, rendered by the model's own chat template."""
        tools: list[dict[str, Any]] | None = request.tools or None
        if tools and not self.tokenizer.has_tool_calling:
            if not self.warned_no_tools:
                logger.warning(
                    "The chat template of %s does not call tools; the agent's %d tool(s) "
                    "are not offered to it. Use a model with a tool-calling template.",
                    self.name,
                    len(tools),
                )
                self.warned_no_tools = True
            tools = None
        if not self.tokenizer.has_chat_template:
            raise ValueError(
                f"{self.path} has no chat template; add one to its tokenizer_config.json"
            )
        try:
            ids = self.tokenizer.apply_chat_template(
                request.messages, tools=tools, add_generation_prompt=True
            )
        except Exception as exc:
            raise ValueError(
                f"The chat template of {self.name} rejected the conversation "
                f"({type(exc).__name__}: {exc}); check the roles of the request's contents"
            ) from exc
        return [int(i) for i in ids]


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

        mlx-lm queues token n+1 for computation before it reads token n, so a stop
        still has a whole token to compute after the one in flight. Here only the
        graph of token n+1 is built ahead (Python work that overlaps token n's
        computation); it is queued after the cancel check, so a cancel leaves at most
        the token in flight to finish, and the decode speed stays that of mlx-lm.
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


class MlxWorker:
    """Owns the MLX thread, its job queue and the models loaded on it."""

    def __init__(self, *, max_loaded_models: int = 2, history: int = 256) -> None:
        self._cv = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._current: Job | None = None
        self._ids = itertools.count(1)
        self._models: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._max_loaded = max_loaded_models
        self.idle = threading.Event()
        """Set while no job is running or queued."""
        self.idle.set()
        self.history: collections.deque[JobStats] = collections.deque(maxlen=history)
        """Stats of finished and skipped jobs, oldest first."""

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def running(self) -> JobStats | None:
        """Live stats of the job on the worker now (updated as it runs), if any."""
        with self._cv:
            return self._current.stats if self._current is not None else None

    @property
    def pending(self) -> int:
        """Jobs waiting in the queue (not counting the running one)."""
        with self._cv:
            return len(self._queue)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closing:
                raise WorkerClosedError(
                    "the MLX worker is shut down; get a new one with adk_cancel.mlx.get_worker()"
                )
            job.stats.job_id = next(self._ids)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="adk-cancel-mlx", daemon=True
                )
                self._thread.start()
            self._queue.append(job)
            self.idle.clear()
            self._cv.notify()

    def call(self, fn: Callable[[MlxWorker], T]) -> concurrent.futures.Future[T]:
        """Run ``fn(worker)`` on the worker thread, after the jobs already queued."""
        job: CallJob[T] = CallJob(fn)
        self.submit(job)
        return job.future

    def withdraw(self, job: Job) -> bool:
        """Drop ``job`` if it has not started; True if it never will."""
        with self._cv:
            if job.state != "queued":
                return False
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            job.state = "done"
            job.skip(None)
            self._record(job)
        job.deliver()
        return True

    def loaded(self, name: str) -> LoadedModel:
        """The model ``name`` (``mlx/...``), loading it if needed. Worker thread only."""
        if threading.current_thread() is not self._thread:
            raise RuntimeError("MlxWorker.loaded() runs on the worker thread; use call()")
        if (hit := self._models.get(name)) is not None:
            self._models.move_to_end(name)
            return hit
        from mlx_lm import load

        path = _catalog.resolve(name, progress=_catalog.progress_bar(name))
        began = time.perf_counter()
        pair = load(str(path))
        model, tokenizer = pair[0], pair[1]
        logger.info("Loaded %s from %s in %.2f s", name, path, time.perf_counter() - began)
        loaded = LoadedModel(name=name, path=path, model=model, tokenizer=tokenizer)
        self._models[name] = loaded
        while len(self._models) > self._max_loaded:
            self._models.popitem(last=False)
        return loaded

    def _record(self, job: Job) -> None:
        self.history.append(job.stats)
        if not self._queue and self._current is None:
            self.idle.set()

    def _serve(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._queue and not self._closing:
                        self._cv.wait()
                    if not self._queue:
                        return
                    job = self._queue.popleft()
                    if job.should_stop():
                        job.state = "done"
                        job.skip(None)
                        self._record(job)
                        skip = True
                    else:
                        job.state = "running"
                        self._current = job
                        skip = False
                if skip:
                    job.deliver()
                    continue
                job.stats.started = True
                job.stats.started_at = time.perf_counter()
                try:
                    job.run(self)
                except BaseException:  # a job's own errors go to its caller; this is a bug
                    logger.exception("MLX worker job %d failed", job.stats.job_id)
                finally:
                    with self._cv:
                        job.state = "done"
                        self._current = None
                        self._record(job)
                job.deliver()
        finally:
            self._release()

    def _release(self) -> None:
        """Free models and this thread's MLX streams; the thread ends right after."""
        self._models.clear()
        if "mlx.core" in sys.modules:
            import mlx.core as mx

            mx.synchronize()
            mx.clear_streams()
        self.idle.set()

    def shutdown(self, timeout: float | None = 30.0) -> bool:
        """Stop the worker: queued jobs fail, the running one is cancelled.

        Returns whether the thread has ended (False if ``timeout`` ran out first, for
        instance while a model was still loading).
        """
        with self._cv:
            self._closing = True
            pending = list(self._queue)
            self._queue.clear()
            current = self._current
            error = WorkerClosedError("the MLX worker was shut down before this job started")
            for job in pending:
                job.state = "done"
                job.skip(error)
                self.history.append(job.stats)
            self._cv.notify_all()
            thread = self._thread
        for job in pending:
            job.deliver()
        if current is not None:
            current.cancel()
        if thread is None:
            self.idle.set()
            return True
        if thread is threading.current_thread():
            raise RuntimeError("MlxWorker.shutdown() cannot be called from the worker thread")
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("The MLX worker did not stop within %s s", timeout)
            return False
        return True


_lock = threading.Lock()
_worker: MlxWorker | None = None
_atexit_registered = False


def get_worker() -> MlxWorker:
    """This process's MLX worker, created on first use (its thread starts with a job)."""
    global _worker, _atexit_registered
    with _lock:
        if _worker is None or _worker.closing:
            _worker = MlxWorker()
            if not _atexit_registered:
                atexit.register(_shutdown_at_exit)
                # An app that runs local models owns this thread: end it with the app (it
                # must clear its streams before the process exits, or exit aborts).
                on_app_shutdown(ashutdown)
                _atexit_registered = True
        return _worker


def shutdown(timeout: float | None = 30.0) -> bool:
    """Stop this process's MLX worker (safe to call more than once).

    Servers should call it (or :func:`ashutdown`) when the app shuts down; it also runs
    at interpreter exit. A later request starts a new worker.
    """
    global _worker
    with _lock:
        worker, _worker = _worker, None
    return worker.shutdown(timeout) if worker is not None else True


async def ashutdown(timeout: float | None = 30.0) -> bool:
    """:func:`shutdown` without blocking the event loop."""
    import asyncio

    return await asyncio.to_thread(shutdown, timeout)


def _shutdown_at_exit() -> None:
    shutdown(timeout=30.0)
