"""ASGI middleware that owns every /run, /run_sse and /run_live request as a cancellable run.

Why a middleware plus a plugin, and not a fork of ADK's routes: the middleware sees the raw
request before ADK does (so it can register the run, listen for the client's disconnect on
the real ``receive`` and finish the response after a forced cancel), while only ADK's
``before_run_callback`` sees the run's ``InvocationContext`` (its ``abort()``) and the task
ADK runs it in. A context variable set here reaches that callback on all three routes.

How a cancel plays out. "Cancel" is a ``:cancel`` request, a cross-worker cancel through the
backend, the client disconnecting (under the disconnect policy ``cancel``, the default), or the
server shutting down; each calls ``RunEntry.request_cancel``.

| race                                        | who wins, and what follows                   |
|---------------------------------------------|----------------------------------------------|
| cancel vs ADK's ``before_run_callback``      | cancel is recorded; ``attach`` aborts at     |
| (no invocation context yet)                 | once, so the agent never starts              |
| cooperative abort vs the grace period       | run ends first: ``stopped_by="abort"``, and  |
| (default 2 s)                               | ADK has sealed the session                   |
| grace period vs a run that ignores abort    | grace ends first: the watcher cancels ADK's  |
| (sync tool, a tool swallowing cancellation) | producer task every 50 ms until it ends      |
|                                             | (``stopped_by="force"``), then repairs       |
| ``/run_live`` (ADK has no abort there)      | force at once, repair, close code 4000       |
| run finishing vs a cancel that came late    | the run, if its answer was complete:         |
|                                             | nothing is aborted, ``stopped_by="finished"``|
| a cancel between a ``/run`` answer's headers | the answer: its headers went out without     |
| and its body (a task hop apart behind ADK's | ``x-adk-cancel``, so the run is finished     |
| tracing middleware, 2.14+)                  | (``stopped_by="finished"``)                  |
| the app's last SSE message vs a cancel      | the cancelled event goes out just before it  |
| forced run vs its response                  | nothing sent yet: adk-cancel answers; a      |
|                                             | stream already started: adk-cancel ends it   |
| force vs a ``/run`` answer being written     | the answer: once its headers are out, the    |
| (ADK's task ended, the body waits to drain) | app is not cancelled (for up to 10 s), so    |
|                                             | the body follows in full                     |
| ADK closing a cancelled live socket itself  | the cancel: ADK's close is held back, the    |
| (1000 when its stream ended on the abort,   | session repaired, then 4000                  |
| 1011 when its tasks failed on the way out)  |                                              |
| client disconnect vs ADK's own disconnect   | adk-cancel: ADK never sees the disconnect    |
| handling (ADK cancels its task at once,     | (the replayed ``receive`` hides it, and when |
| even mid-commit)                            | ADK's listener asks, adk-cancel's listens in |
|                                             | its task), so the run is aborted like any    |
|                                             | other cancel                                 |
| the run raising after a cancel (ADK's seal  | the cancel: ``stopped_by="error"``, logged,  |
| write failing on a stale shared session)    | repaired and answered as cancelled           |
| ADK's seal vs the stored session            | adk-cancel reads the session back after      |
|                                             | every cancel and answers any call left open  |
| a new run vs server shutdown                | shutdown: 503 (websocket: close 1012)        |
| client disconnect under policy ``continue`` | the run: not cancelled, marked ``detached``; |
| (``/run``, ``/run_sse``; live runs always    | a cancel, a shutdown or its end stop it as   |
| end with their websocket)                   | they would any run                           |
| a ``continue`` run vs a client that stops   | the run: ADK writes into the run's log, not  |
| reading (no disconnect)                     | the socket; a forwarder sends the log on     |
|                                             | (``_run_output.py``)                         |
| a run's last event vs its followers         | the followers: the end marker follows the    |
|                                             | final event, so each sends all, then ends    |
| a follower vs the log's bounds              | the bounds: the oldest events drop; a        |
|                                             | follower that lacked them ends with          |
|                                             | ``event: error`` (a rejoin: 410)             |
| a run or idle deadline vs the run ending    | the run, if it ended first (the watcher is   |
| (``_deadline.py``)                          | cancelled with its task group); else the     |
|                                             | deadline: a cancel with ``cause="deadline"`` |
| a deadline vs a ``:cancel`` (or disconnect) | whichever ``request_cancel`` comes first:    |
|                                             | later orders are no-ops; the record says who |
| a new run vs an active run of its session   | its busy policy (``_busy.py``): allow both;  |
| (this worker or another)                    | reject 409; interrupt/rollback cancel it     |
|                                             | (cause busy), wait until it is sealed (and   |
|                                             | rolled back), then start; enqueue waits      |
| two new runs of one session at once, on     | the session's lease, taken atomically: one   |
| any workers (policy other than allow)       | starts; under interrupt the later then       |
|                                             | replaces it, under enqueue it waits          |
| a cancel (or the client leaving) vs a       | the cancel: it never starts,                 |
| queued run                                  | ``stopped_by="queued"``                      |
| a run's answer completing vs a newer run's  | the answer: the run is marked ended before   |
| interrupt                                   | its session is given back, before the last   |
|                                             | byte, so the interrupt finds it finished     |
| ADK's seal vs the words the run streamed    | the words: stored just before the seal (the  |
|                                             | plugin sees the seal first; ``_partial.py``) |
| the next run vs a rollback                  | the rollback: the session is given back only |
|                                             | after it (and after the repair)              |
| a run's record vs its client's last byte    | the record: the run is unlisted and recorded |
| (or close frame)                            | (and its session given back) first, so a     |
|                                             | client acting on its answer sees it ended    |

The cancel route answers (``wait=true``) when ``RunEntry.finished`` is set: after the run's
task ended, the session was read back and repaired (and, with ``action="rollback"``, rewound)
and the response was finished, so the next turn on the session sees a well-formed history.
Registry clean-up is in ``finally`` (ADK skips ``after_run_callback`` on a cancelled task).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio

from . import _deadline, _metrics, _partial
from ._busy import Refusal, SessionGate, policy_from
from ._deadline import BadDeadline, Deadlines
from ._early_accept import EarlyAccept
from ._json_depth import too_deep_answer
from ._models import OnBusy, Route, SessionKey, is_unicode_text
from ._order import CancelOrder
from ._registry import RunEntry, RunRegistry, current_run
from ._repair import RepairFailed, repair_session
from ._response import Response, json_response
from ._rollback import GetRunner, not_rolled_back, roll_back
from ._run_output import RunOutput, disconnect_policy
from ._run_tasks import RunTasks
from .adk import live

logger = logging.getLogger("adk_cancel")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WS_CLOSE_SHUTTING_DOWN = 1012
"""WebSocket close code ("service restart") for a /run_live that arrives during shutdown."""

FORCE_RETRY_S = 0.05
DRAIN_S = 1.0
MAX_WRITE_WAIT_S = 10.0
"""How long a force holds off for session writes (a store that hangs must not keep a run
going for ever)."""
MAX_ANSWER_WAIT_S = 10.0
"""How long a force holds off for a ``/run`` answer being written (a client that never reads
it must not keep the run listed for ever)."""

_HTTP_ROUTES: dict[str, Route] = {"/run": "run", "/run_sse": "run_sse"}


class _Refused(Exception):
    """A run request adk-cancel answers itself, with this status and message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _route_of(scope: Scope) -> Route | None:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if scope["type"] == "http" and scope.get("method") == "POST":
        return _HTTP_ROUTES.get(path)
    if scope["type"] == "websocket" and path == "/run_live":
        return "run_live"
    return None


def _key_from_body(body: bytes, default_app: str | None) -> SessionKey | None:
    """The run's session, or None when ADK will reject the body itself (it answers those
    with its own 4xx). Raises ``_Refused`` for ids no store or answer can hold."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    app = data.get("appName", data.get("app_name")) or default_app or ""
    user = data.get("userId", data.get("user_id"))
    session = data.get("sessionId", data.get("session_id"))
    if not isinstance(app, str) or not isinstance(user, str) or not isinstance(session, str):
        return None
    if not all(is_unicode_text(part) for part in (app, user, session)):
        raise _Refused(
            422,
            "appName, userId and sessionId must be valid Unicode text: this request has a "
            "lone surrogate escape (such as \\ud800) in one of them",
        )
    return SessionKey(app, user, session)


def _left(entry: RunEntry) -> CancelOrder:
    return CancelOrder(entry.key, "client disconnected", cause="disconnect")


def _outer_cancelled() -> bool:
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


async def _read_body(receive: Receive) -> bytes | None:
    """The request's body, or None if the client left before sending all of it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _app_listens(scope: Scope, entry: RunEntry) -> bool:
    """Whether ADK's handler asks ``receive`` again, and at once, for as long as the run
    lasts: ``/run``'s disconnect monitor does, and so does Starlette's StreamingResponse
    (``/run_sse``) under ASGI spec versions before 2.4 (uvicorn's 2.3); from 2.4 on it does
    not. A run that waits for its session first (busy policy) has nobody asking meanwhile."""
    if entry.queued:
        return False
    if entry.route == "run":
        return True
    spec = str(scope.get("asgi", {}).get("spec_version", "2.0"))
    try:
        return tuple(int(part) for part in spec.split(".")) < (2, 4)
    except ValueError:
        return False


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an app that reads the body again, then the client's messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class _HttpRun:
    """One ``/run`` or ``/run_sse`` request while its run lasts: the app's call, the
    ``receive`` it is given, and the listener for its client's disconnect.

    An object with slots and methods rather than closures over ``_serve_http``'s locals:
    it lives as long as its run, and a closure and its cells per local were about 1 KB of
    every run on a server full of runs waiting in tools.
    """

    __slots__ = (
        "_body",
        "_listen_in_replay",
        "_receive",
        "app_done",
        "deadlines",
        "entry",
        "middleware",
        "output",
        "response",
        "scope",
    )

    def __init__(
        self,
        middleware: CancelMiddleware,
        scope: Scope,
        receive: Receive,
        entry: RunEntry,
        output: RunOutput,
        body: bytes,
        deadlines: Deadlines,
    ) -> None:
        self.middleware = middleware
        self.deadlines = deadlines
        self.scope = scope
        self._receive = receive
        self.entry = entry
        self.output = output
        self._body: bytes | None = body
        self.app_done = False
        self._listen_in_replay = _app_listens(scope, entry) and output.stream is None
        # The gate sees the app's own bytes (before any run log): the answer's last byte
        # is when the run ended on its own.
        self.response = Response(entry, middleware.gate.http_send(entry, output.send))

    async def replay(self) -> Message:
        """The app's ``receive``: the body, once, then nothing. Only the middleware acts on
        the client's disconnect: ADK's /run monitor and Starlette's StreamingResponse get the
        body once and then nothing, so a disconnect is a cancel like any other (abort
        first), never ADK's instant task cancel that can interrupt a session commit
        half-way. When they ask again, the middleware's listener runs in the asking task."""
        body, self._body = self._body, None
        if body is not None:
            # Not kept for the run's life (a message with an image is megabytes).
            return {"type": "http.request", "body": body, "more_body": False}
        if self._listen_in_replay:
            # The app's own disconnect listener asks: ours runs in its task, not in one of
            # ours (a task and its coroutine were a kilobyte of every waiting run).
            self._listen_in_replay = False
            try:
                await self.listen()
            except BaseException:
                if not self.entry.disconnected:
                    self._listen_in_replay = True  # cancelled: the next one to ask listens
                raise
        # A bare future: nothing to schedule for a run that waits for hours.
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    def listener(self) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """The disconnect listener to run beside the app, or None if it runs in ``replay``."""
        if self._listen_in_replay:
            return None
        return self.output.with_forwarder(self.listen)

    async def admit(self) -> bool:
        """Whether the app may be called now (its busy policy); a refusal is answered."""
        middleware, entry = self.middleware, self.entry
        try:
            return await middleware.gate.admit(entry)
        except Refusal as refusal:
            middleware._close(entry)  # refused: gone from listings before its client knows
            payload = refusal.body.model_dump(mode="json")
            for reply in json_response(refusal.status, payload):
                await self.response.send(reply)
            return False

    async def listen(self) -> None:
        """The client's disconnect: a cancel, or under policy ``continue`` a detach."""
        receive = self._receive
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except OSError:
            pass
        entry = self.entry
        entry.disconnected = True
        if self.app_done:
            pass
        elif entry.on_disconnect == "continue":
            entry.detached = True
            entry.registry.backend.announce(entry.info())
        else:
            entry.request_cancel(_left(entry))


class CancelMiddleware:
    """Pure ASGI middleware; every other scope passes straight through."""

    def __init__(
        self,
        app: ASGIApp,
        registry: RunRegistry,
        default_app_name: str | None = None,
        get_runner: GetRunner | None = None,
    ) -> None:
        self.app = app
        self.registry = registry
        self.default_app_name = default_app_name
        self.get_runner = get_runner
        """The app's runner by name, for rollbacks (ADK's web server has it)."""
        self.gate = SessionGate(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _route_of(scope)
        if route is None:
            await self.app(scope, receive, send)
        elif route == "run_live":
            await self._serve_ws(scope, receive, send)
        else:
            # Two steps, so that the frame that reads and checks the request is gone while
            # the run lasts (hours, for a run waiting in a tool).
            run = await self._open_http(scope, receive, send, route)
            if run is None:
                return
            try:
                await self._run(
                    run.entry,
                    run.admit,
                    run.scope,
                    run.replay,
                    run.response.send,
                    run.listener(),
                    run.deadlines,
                )
            except Exception as exc:
                await run.response.fail_http(exc)
                raise
            await self._end_http(run)

    # -- HTTP: /run and /run_sse -----------------------------------------------------------

    async def _open_http(
        self, scope: Scope, receive: Receive, send: Send, route: Route
    ) -> _HttpRun | None:
        """The request's run, registered; None if it was answered here or passed on."""
        body = await _read_body(receive)
        if body is None:
            return None  # the client left before the run could start
        if (too_deep := too_deep_answer(body)) is not None:
            for reply in json_response(422, too_deep):  # before anything parses it
                await send(reply)
            return None
        deadlines = Deadlines()
        on_busy: OnBusy | None = None
        try:
            key = _key_from_body(body, self.default_app_name)
            if key is not None and not self.registry.accepting:
                raise _Refused(503, "The server is shutting down: send the run again.")
            try:
                policy = disconnect_policy(scope, self.registry.options.on_disconnect)
            except ValueError as bad_header:
                raise _Refused(422, str(bad_header)) from bad_header
            if key is not None:
                deadlines = self._deadlines(scope)
                on_busy = self._policy(scope)
        except _Refused as refused:
            extra = [(b"connection", b"close")] if refused.status == 503 else []
            for reply in json_response(refused.status, {"detail": refused.detail}, *extra):
                await send(reply)
            return None

        if key is None:
            # ADK rejects this body itself (422/400) and no run starts: its own handling,
            # its own disconnects.
            await self.app(scope, _replaying(body, receive), send)
            return None

        await self.registry.start()
        entry = self.registry.register(key, route, on_busy)
        _partial.watch(entry)
        output = RunOutput.open(entry, send, policy)
        return _HttpRun(self, scope, receive, entry, output, body, deadlines)

    async def _end_http(self, run: _HttpRun) -> None:
        """After the app: the cancel's repair and answer, the run's end, the rest of its log."""
        entry = run.entry
        run.app_done = True
        try:
            await self._after(entry)
            if entry.cancel_reason is not None:
                await run.response.finish_http()
            # Recorded and unlisted before the answer's last byte: a client that lists the
            # session's runs, retries or sends its next turn on reading it finds the run
            # ended (its record final, its session given back).
            if run.output.forwards_stream:
                # Policy continue: the stream's end goes into the run's log, which its
                # forwarder sends on later; it must end the log before the run leaves the
                # registry (which would mark the log unfinished).
                await run.response.send_last()
            await self._unlist(entry)
            await run.response.send_last()
        except OSError:
            logger.debug("Client gone while finishing run %s", entry.run_id)
        finally:
            await self.gate.release(entry)
            self._close(entry)
        # The run is over (and unlisted); its client may still be reading the end of it.
        await run.output.flush()

    # -- WebSocket: /run_live --------------------------------------------------------------

    async def _serve_ws(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        app = (query.get("app_name") or [self.default_app_name or ""])[0]
        user = (query.get("user_id") or [None])[0]
        session = (query.get("session_id") or [None])[0]
        if user is None or session is None:
            await self.app(scope, receive, send)
            return
        try:
            deadlines = self._deadlines(scope)
        except _Refused as refused:
            await EarlyAccept.deny(scope, send, refused.status, {"detail": refused.detail})
            return
        if not self.registry.accepting:
            await send(
                {
                    "type": "websocket.close",
                    "code": WS_CLOSE_SHUTTING_DOWN,
                    "reason": "server shutting down",
                }
            )
            return
        try:
            on_busy = self._policy(scope, live=True)
        except _Refused as refused:
            await EarlyAccept.deny(scope, send, refused.status, {"detail": refused.detail})
            return

        await self.registry.start()
        entry = self.registry.register(SessionKey(app, user, session), "run_live", on_busy)
        _partial.watch(entry)
        early = EarlyAccept(entry, scope, receive, send)
        response = Response(entry, early.send)
        app_done = False
        # ADK's live handler reads and sends from tasks of its own, which it leaves behind
        # when it is cancelled: the tasks that touch the socket, and the run's producer, are
        # the ones to end afterwards.
        handler_tasks: set[asyncio.Task[Any]] = set()
        host = asyncio.current_task()
        looked_for_adk_tasks = False

        def note_task() -> None:
            nonlocal looked_for_adk_tasks
            if (task := asyncio.current_task()) is not None:
                handler_tasks.add(task)
                if not looked_for_adk_tasks and task is not host and host is not None:
                    # One of ADK's tasks asks: the handler has made them all and waits for
                    # them now, so its list of them is there to read, once.
                    looked_for_adk_tasks = True
                    found = live.handler_tasks(host)
                    logger.debug("Live run %s: ADK's tasks %s", entry.run_id, found)
                    handler_tasks.update(found)

        async def watch_receive() -> Message:
            note_task()
            message = await early.receive()
            _deadline.note_event(entry)  # the client speaking: the live run is not idle
            if message["type"] == "websocket.disconnect":
                entry.disconnected = True
                if not app_done:
                    entry.request_cancel(_left(entry))
            return message

        async def watch_send(message: Message) -> None:
            note_task()
            await response.send(message)

        async def admit() -> bool:
            try:
                return await self.gate.admit(entry, on_wait=early.accept)
            except Refusal as refusal:
                self._close(entry)
                await early.refuse(refusal.status, refusal.body.model_dump(mode="json"))
                return False

        await self._run(entry, admit, scope, watch_receive, watch_send, early.listen, deadlines)
        app_done = True
        try:
            producer = {entry.producer} if entry.producer is not None else set()
            await live.end_tasks(handler_tasks | producer, DRAIN_S)
            await self._after(entry)
            await self._unlist(entry)  # before the close frame, as an HTTP run's last byte
            if entry.cancel_reason is not None:
                await response.finish_ws()
        except OSError:
            logger.debug("Client gone while closing cancelled live run %s", entry.run_id)
        finally:
            await self.gate.release(entry)
            self._close(entry)

    # -- shared ----------------------------------------------------------------------------

    def _deadlines(self, scope: Scope) -> Deadlines:
        try:
            return _deadline.deadlines_for(scope.get("headers") or [], self.registry.options)
        except BadDeadline as exc:
            raise _Refused(422, str(exc)) from exc

    def _policy(self, scope: Scope, live: bool = False) -> OnBusy:
        """The run's busy policy: header, query parameter (live), or the server's."""
        query = scope.get("query_string", b"") if live else None
        try:
            return policy_from(scope.get("headers", []), query, self.registry.options.on_busy)
        except ValueError as exc:
            raise _Refused(400, str(exc)) from exc

    async def _run(
        self,
        entry: RunEntry,
        admit: Callable[[], Awaitable[bool]],
        scope: Scope,
        receive: Receive,
        send: Send,
        listen: Callable[[], Coroutine[Any, Any, None]] | None,
        deadlines: Deadlines,
    ) -> None:
        """Once ``admit`` says so, run the app beside the disconnect listener and the
        deadline watcher, if any; the cancel watcher starts once a cancel comes. The app
        finishing ends them all.
        The helpers are tasks this call owns (``RunTasks``): a helper that fails cancels the
        app and its error is raised here, as a task group would.
        """
        token = current_run.set(entry)
        tasks = RunTasks(entry, self._watch)

        try:
            try:
                if listen is not None:
                    tasks.spawn(listen())
                if deadlines:
                    _deadline.prepare(entry, deadlines)
                    tasks.spawn(_deadline.watch(entry, deadlines))
                entry.on_cancel = tasks.start_watcher
                if entry.cancel_order is not None:
                    tasks.start_watcher()
                with tasks:
                    if await admit():
                        await self.app(scope, receive, send)
                if entry.cancel_reason is None:
                    entry.ended = True
            except asyncio.CancelledError:
                # ADK re-raises the cancellation of its own task, which our force (or,
                # after a disconnect, nobody's answer) caused: the run is over, not
                # this request.
                if not (entry.forced or entry.disconnected) or _outer_cancelled():
                    raise
            except Exception as error:
                if entry.cancel_reason is None:
                    if entry.error is None:
                        entry.error = f"{type(error).__name__}: {error}"
                    raise
                if entry.forced and isinstance(error, RuntimeError):
                    # The force's own echo: since google-adk 2.14 a BaseHTTPMiddleware (its
                    # tracing context) sits between adk-cancel and ADK's routes, and turns the
                    # cancellation of the route's task into "No response returned.". The run
                    # stopped by force; nothing failed.
                    logger.debug("Run %s: the app after its force: %r", entry.run_id, error)
                    return
                # Failing on the way out of a cancel (ADK's seal write hitting a stale
                # session on a shared store) still ends the run: repair and answer as
                # cancelled rather than a 500 and an unsealed session.
                entry.failed = True
                logger.warning(
                    "Run %s (session %s) failed after its cancel (%s: %s); repairing the session",
                    entry.invocation_id or entry.run_id,
                    entry.key.session_id,
                    type(error).__name__,
                    error,
                )
                logger.debug("The failure of run %s", entry.run_id, exc_info=True)
            finally:
                if entry.cancel_mono is not None:
                    entry.stop_ms = round((time.monotonic() - entry.cancel_mono) * 1000, 3)
                entry.on_cancel = None
                await tasks.aclose()
        except BaseException:
            await self.gate.release(entry)
            self._close(entry)
            raise
        finally:
            current_run.reset(token)

    async def _watch(self, entry: RunEntry, tasks: RunTasks) -> None:
        """Started by the run's first cancel (``RunEntry.on_cancel``)."""
        _metrics.cancel_requested(entry)
        if entry.queued:
            return  # it never started: the gate stops waiting for it, and that is all
        # /run_live has no abort checks, and without the plugin there is no abort handle.
        abortable = entry.route != "run_live" and self.registry.plugin_installed
        if abortable:
            await anyio.sleep(self.registry.grace_s)
            logger.warning(
                "Run %s (session %s) ignored abort for %.1f s; cancelling its task",
                entry.invocation_id or entry.run_id,
                entry.key.session_id,
                self.registry.grace_s,
            )
            _metrics.forced(entry, self.registry.grace_s)
        entry.forced = True
        forced_at = time.monotonic()
        while True:
            if entry.writing() and time.monotonic() - forced_at < MAX_WRITE_WAIT_S:
                # A session write is in flight or waiting (ADK's seal, often): cancelling now
                # would cancel the waiting write. Next round.
                await anyio.sleep(FORCE_RETRY_S)
                continue
            producer = entry.producer
            if producer is not None and not producer.done():
                producer.cancel()
            if (
                entry.route == "run"
                and entry.http_status is not None
                and time.monotonic() - forced_at < MAX_ANSWER_WAIT_S
            ):
                # ADK's run is over and it is writing the answer (JSON with a Content-Length,
                # its body waiting for a slow client's socket): cancelling it now would cut
                # the answer after its headers. Its body is all that is left to send.
                await anyio.sleep(FORCE_RETRY_S)
                continue
            if producer is None or producer.done() or entry.route == "run_live":
                # ADK's live handler waits for *all* its tasks once one is cancelled (a
                # cancelled task is no exception to asyncio.wait(FIRST_EXCEPTION)): cancel the
                # handler itself.
                tasks.cancel_app()
            await anyio.sleep(FORCE_RETRY_S)

    async def _after(self, entry: RunEntry) -> None:
        """After the app returned: make sure ADK's task is gone, then read the session back
        and answer any function call the run left open."""
        if entry.cancel_reason is None:
            return
        if entry.queued:
            entry.stopped_by = "queued"
            not_rolled_back(entry, "nothing to roll back: the run was still queued")
            return
        ic = entry.invocation_context
        if ic is None and not (entry.forced or entry.failed):
            entry.stopped_by = "finished"  # ADK ended the request before starting a run
        else:
            entry.stopped_by = entry.stop_kind()
        producer = entry.producer
        if producer is not None and not producer.done():
            # A forced /run task may still be unwinding; don't repair under its feet.
            with anyio.move_on_after(DRAIN_S):
                while not producer.done():
                    if not entry.writing():
                        producer.cancel()
                    await asyncio.wait([producer], timeout=FORCE_RETRY_S)
        if entry.session_service is None or not entry.invocation_id:
            not_rolled_back(entry, "nothing to roll back: the run was stopped before it started")
            return
        if entry.writes is not None:
            # A write the cancel interrupted still ends (see _writes.py): read after it.
            with anyio.move_on_after(DRAIN_S):
                await entry.writes.settled(entry.key.session_id)
        await _partial.keep(entry)  # the streamed text, where ADK's seal did not carry it in
        try:
            entry.repaired = await repair_session(
                entry.session_service, entry.key, entry.invocation_id, entry.cancel_reason
            )
        except RepairFailed as exc:
            logger.error("%s: %s", exc, exc.__cause__)
        await roll_back(entry, self.get_runner)

    async def _unlist(self, entry: RunEntry) -> None:
        """The run's session given back, the run unlisted and its record made: before its
        client's last byte (``_close``, after it, then wakes whoever waits for the run)."""
        await self.gate.release(entry)
        self.registry.unregister(entry)

    def _close(self, entry: RunEntry) -> None:
        if not entry.finished.is_set():
            self.registry.unregister(entry)
            entry.finished.set()
