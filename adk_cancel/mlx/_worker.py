"""The one thread per process that runs MLX: its job queue, the models loaded on it, its end.

Why one long-lived thread: since mlx 0.31.2 a stream belongs to the thread that created
it, so a model must be used where it was loaded; MLX work on a thread that ends without
``mx.clear_streams()`` makes about half of processes abort at exit ("terminate called
without an active exception"); and a thread whose streams were cleared cannot run mlx-lm
again. So the worker starts on first use, serves jobs FIFO, clears its streams exactly
once when it stops (:meth:`MlxWorker.shutdown`, also registered with ``atexit`` and with
the app's shutdown), and a later job gets a fresh worker with a fresh thread.

A job cancelled while queued is dropped unstarted; how a running generation stops is
the generation loop's business (``_generation.py``).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast

from .._shutdown import on_app_shutdown
from . import _catalog
from ._events import JobStats
from ._prompt import ChatRequest

logger = logging.getLogger("adk_cancel.mlx")

T = TypeVar("T")


class WorkerClosedError(RuntimeError):
    """The MLX worker was shut down while a job waited for it."""


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
