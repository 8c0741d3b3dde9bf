"""The one thread per process that runs MLX: its job queue, the models on it, its end.

Why one long-lived thread: since mlx 0.31.2 a stream belongs to the thread that created
it, so a model must be used where it was loaded; MLX work on a thread that ends without
``mx.clear_streams()`` makes about half of processes abort at exit ("terminate called
without an active exception"); and a thread whose streams were cleared cannot run mlx-lm
again. So the worker starts on first use, clears its streams exactly once when it stops
(:meth:`MlxWorker.shutdown`, also registered with ``atexit`` and with the app's shutdown),
and a later job gets a fresh worker with a fresh thread.

The thread loop: start the jobs queued (a function call runs there and then; a
generation joins its model's batch, ``_batch.Engine``), then one step of every model with
generations in flight, and again. A job cancelled while queued is dropped unstarted.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Generic, Literal, TypeVar, cast

from .._shutdown import on_app_shutdown
from . import _catalog
from ._batch import Engine, ServingOptions
from ._events import JobStats
from ._loaded import LoadedModel

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

    def start(self, worker: MlxWorker) -> bool:
        """Begin the work on the worker thread; True if it is already over. A job that
        goes on (a generation in its model's batch) calls ``worker.complete(self)`` once
        its outcome is ready, still on the worker thread."""
        raise NotImplementedError

    def skip(self, error: BaseException | None) -> None:
        """Called instead of :meth:`start` for a job that never starts."""
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

    def start(self, worker: MlxWorker) -> bool:
        try:
            self._result = self.fn(worker)
            self.stats.finish = "stop"
        except BaseException as exc:
            self.stats.finish = "error"
            self._error = exc
        self.stats.stopped_at = time.perf_counter()
        return True

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


class MlxWorker:
    """Owns the MLX thread, its job queue, the models loaded on it and their batches."""

    def __init__(
        self,
        *,
        options: ServingOptions | None = None,
        max_loaded_models: int = 2,
        history: int = 256,
    ) -> None:
        self._cv = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._active: dict[Job, None] = {}  # started, not done; in start order
        self._ids = itertools.count(1)
        self._models: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._max_loaded = max_loaded_models
        self.options = options or ServingOptions()
        """How generations share a model; a new value applies from the next step."""
        self.idle = threading.Event()
        """Set while no job is running or queued."""
        self.idle.set()
        self.history: collections.deque[JobStats] = collections.deque(maxlen=history)
        """Stats of finished and skipped jobs, oldest first."""

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def active(self) -> list[JobStats]:
        """Live stats of the jobs on the worker now (updated as they run), oldest first."""
        with self._cv:
            return [job.stats for job in self._active]

    @property
    def running(self) -> JobStats | None:
        """Live stats of the oldest job on the worker now, if any."""
        active = self.active
        return active[0] if active else None

    @property
    def pending(self) -> int:
        """Jobs waiting in the queue (not counting the started ones)."""
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
        """Run ``fn(worker)`` on the worker thread, between two steps of the batches."""
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
        engine = Engine(model, lambda: self.options)
        loaded = LoadedModel(name, path, model, tokenizer, engine)
        self._models[name] = loaded
        # Least recently used first, but never a model with generations in flight.
        for old in [m for m in self._models.values() if not m.engine.busy]:
            if len(self._models) <= self._max_loaded:
                break
            if old is not loaded:
                del self._models[old.name]
        return loaded

    def complete(self, job: Job) -> None:
        """Record a started job as done and hand its outcome over. Worker thread only."""
        with self._cv:
            job.state = "done"
            self._active.pop(job, None)
            self._record(job)
        job.deliver()

    def _record(self, job: Job) -> None:
        self.history.append(job.stats)
        if not self._queue and not self._active:
            self.idle.set()

    def _busy(self) -> list[Engine]:
        return [m.engine for m in self._models.values() if m.engine.busy]

    def _serve(self) -> None:
        try:
            while True:
                busy = self._busy()
                # Between two steps with nothing queued the lock is left alone (it is
                # per token): a job queued meanwhile is taken before the next step.
                if self._queue or not busy or self._closing:
                    self._take_jobs()
                    busy = self._busy()
                    if not busy and self._closing and not self._queue:
                        return  # nothing left to finish
                for engine in busy:
                    try:
                        engine.step()
                    except Exception as exc:  # nothing to blame one sequence for
                        logger.exception("MLX batch step failed; ending its generations")
                        engine.fail_all(exc)
        finally:
            self._release()

    def _take_jobs(self) -> None:
        """Wait for work, then start the jobs queued (dropping those cancelled)."""
        with self._cv:
            while not self._queue and not self._busy() and not self._closing:
                self._cv.wait()
            jobs = list(self._queue)
            self._queue.clear()
            skipped, started = [], []
            for job in jobs:
                if job.should_stop():
                    job.state = "done"
                    job.skip(None)
                    self._record(job)
                    skipped.append(job)
                else:
                    job.state = "running"
                    self._active[job] = None
                    started.append(job)
        for job in skipped:
            job.deliver()
        for job in started:
            self._start(job)

    def _start(self, job: Job) -> None:
        job.stats.started = True
        job.stats.started_at = time.perf_counter()
        try:
            over = job.start(self)
        except BaseException:  # a job's own errors go to its caller; this is a bug
            logger.exception("MLX worker job %d failed", job.stats.job_id)
            over = True
        if over:
            self.complete(job)

    def _release(self) -> None:
        """Free models and this thread's MLX streams; the thread ends right after."""
        self._models.clear()
        if "mlx.core" in sys.modules:
            import mlx.core as mx

            mx.synchronize()
            mx.clear_streams()
        self.idle.set()

    def shutdown(self, timeout: float | None = 30.0) -> bool:
        """Stop the worker: queued jobs fail, the started ones are cancelled.

        Returns whether the thread has ended (False if ``timeout`` ran out first, for
        instance while a model was still loading).
        """
        with self._cv:
            self._closing = True
            pending = list(self._queue)
            self._queue.clear()
            started = list(self._active)
            error = WorkerClosedError("the MLX worker was shut down before this job started")
            for job in pending:
                job.state = "done"
                job.skip(error)
                self.history.append(job.stats)
            self._cv.notify_all()
            thread = self._thread
        for job in pending:
            job.deliver()
        for job in started:
            job.cancel()
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
_options = ServingOptions()
_atexit_registered = False


def configure(
    *,
    completion_batch_size: int | None = None,
    prefill_batch_size: int | None = None,
    prompt_cache_bytes: int | None = None,
) -> ServingOptions:
    """Set how this process's MLX worker shares models (for the running worker, from its
    next step, and for later ones); returns the options now in force. Unset values keep
    theirs; see :class:`ServingOptions` for what each means."""
    global _options
    changes = {
        k: v
        for k, v in (
            ("completion_batch_size", completion_batch_size),
            ("prefill_batch_size", prefill_batch_size),
            ("prompt_cache_bytes", prompt_cache_bytes),
        )
        if v is not None
    }
    with _lock:
        _options = dataclasses.replace(_options, **changes)
        if _worker is not None:
            _worker.options = _options
        return _options


def get_worker() -> MlxWorker:
    """This process's MLX worker, created on first use (its thread starts with a job)."""
    global _worker, _atexit_registered
    with _lock:
        if _worker is None or _worker.closing:
            _worker = MlxWorker(options=_options)
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


async def ashutdown(timeout: float | None = 30.0) -> bool:  # noqa: ASYNC109 (the worker thread's join, in a thread)
    """:func:`shutdown` without blocking the event loop."""
    import asyncio

    return await asyncio.to_thread(shutdown, timeout)


def _shutdown_at_exit() -> None:
    shutdown(timeout=30.0)
