"""Random runs, cancels, disconnects and bad input against real servers, then the invariants
read back from the stores: the chaos test and ``bench/soak.py`` both drive this.

Point it at one or more running servers (``ServerProcess``) that serve agents like the slow
sample agent (the scripts of ``ScriptedLlm``: ``tool S``, ``words N``, ``quick``), and give it
a way to read a session's stored events. Each :meth:`Chaos.round` starts runs on ``/run``,
``/run_sse`` and ``/run_live`` of random workers, cancels them through random workers (with
and without ``wait``), drops clients mid-run, lists runs and sends malformed requests, keeping
a bounded number in flight; then it waits for quiet and checks, per session it used:

- no answer was a 5xx (a 503 counts only when the cancel backend was deliberately down);
- no worker still lists a run (no registry leak);
- the stored session has no function call without a response;
- every run a cancel answered as stopped (``stopped_by`` ``abort`` or ``force``) was told to
  its client, unless that client had left itself: ``/run_sse`` ends with ``event:
  cancelled``, ``/run`` carries ``x-adk-cancel: cancelled``, ``/run_live`` closes with 4000
  (matched by the run's id, which the HTTP routes send as ``x-adk-run-id``; a live client
  never learns it, so by the invocation ids its events carried, else by session and time);
- a follow-up turn works;
- the servers' logs have no traceback, unretrieved task exception or destroyed pending task.

It records each worker's RSS after each round, and how long cross-worker cancel took to work
again after a backend outage (:meth:`Chaos.outage`). Needs ``websockets`` (a dependency of
google-adk).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import websockets

from . import message, run_body, session_path, unanswered_calls

if TYPE_CHECKING:
    from . import RedisServer

EventsReader = Callable[[str, str, str], Awaitable[list[Any]]]
"""``(app, user, session_id) -> stored events`` (ADK ``Event`` objects or their JSON)."""

BAD_LOG_MARKERS = ("Traceback", "never retrieved", "was destroyed but it is pending")

_BAD_BODIES: list[tuple[str, bytes]] = [
    ("/run", b"[" * 3000 + b"]" * 3000),
    ("/run_sse", b"{not json"),
    ("/run", b"[]"),
    ("/run", json.dumps(run_body("\ud800x", "quick")).encode()),
    ("/run_sse", b'{"appName": "slow_agent", "userId": 5, "sessionId": "s"}'),
    (":cancel", b'{"timeout_s": NaN}'),
    (":cancel", b'{"reason": "\\ud800"}'),
    (":cancel", b"\xff\xfe"),
    (":cancel", b'{"wait": "maybe"}'),
    (":cancel", b"[" * 3000 + b"]" * 3000),
]


LIVE_CLOSE_CANCELLED = 4000
"""The close code a cancelled ``/run_live`` client gets (``adk_cancel``'s documented answer)."""

STOPPED = ("abort", "force")
"""The ``stopped_by`` of a run that a cancel stopped while it ran: its client must be told."""


@dataclass
class _Seen:
    """What one run's client saw, for the told-of-its-cancel check."""

    route: str
    app: str
    sid: str
    opened: float
    closed: float = math.inf
    run_id: str | None = None
    invocation_ids: set[str] = field(default_factory=set)
    saw: str = "nothing"
    told: bool = False
    left: bool = False
    """The client disconnected itself (its timer ran out): nobody owes it an answer."""
    claimed: bool = False


@dataclass
class _CancelAnswer:
    sent: float
    answered: float
    runs: list[dict[str, Any]]


@dataclass
class Worker:
    """A server the chaos talks to; ``pid`` and ``log`` are read for RSS and log lines."""

    url: str
    pid: int | None = None
    log: Callable[[], str] | None = None


@dataclass
class ChaosReport:
    operations: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    outage_503: int = 0
    leaked_runs: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    broken_follow_ups: list[str] = field(default_factory=list)
    bad_log_lines: list[str] = field(default_factory=list)
    sessions_checked: int = 0
    stopped_runs: int = 0
    """Runs a cancel answered as stopped by ``abort`` or ``force`` (each counted once)."""
    told: int = 0
    """Of those, runs whose client saw the cancel (``event: cancelled``, the header, 4000)."""
    client_left: int = 0
    """Of those, runs whose client had disconnected itself first (owed nothing)."""
    not_told: list[str] = field(default_factory=list)
    """Of those, runs whose client was not told: route, ``stopped_by``, what it saw."""
    rss_kb: list[list[int]] = field(default_factory=list)
    """Each worker's RSS after each round (sessions deleted first)."""
    recovery_s: list[float] = field(default_factory=list)
    """After each backend outage: until a cross-worker cancel worked again."""

    @property
    def rss_growth_kb(self) -> list[int]:
        """Growth of each worker's RSS over the last round (0 if fewer than two rounds)."""
        if len(self.rss_kb) < 2:
            return [0 for _ in (self.rss_kb[0] if self.rss_kb else [])]
        return [b - a for a, b in zip(self.rss_kb[-2], self.rss_kb[-1], strict=True)]

    def failures(self) -> list[str]:
        """Every broken invariant, as a line; empty when the servers kept every promise."""
        out = [f"5xx: {line}" for line in self.server_errors]
        out += [f"leaked run: {line}" for line in self.leaked_runs]
        out += [f"unanswered call: {line}" for line in self.unanswered]
        out += [f"broken follow-up: {line}" for line in self.broken_follow_ups]
        out += [f"client not told: {line}" for line in self.not_told]
        out += [f"log: {line}" for line in self.bad_log_lines]
        return out

    def table(self) -> str:
        ops = sum(self.operations.values())
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.operations.items()))
        rows = [
            ("operations", f"{ops} ({kinds})"),
            ("sessions checked", str(self.sessions_checked)),
            ("5xx answers", str(len(self.server_errors))),
            ("503 while the backend was down (documented)", str(self.outage_503)),
            ("runs still listed afterwards (leaks)", str(len(self.leaked_runs))),
            ("function calls without a response", str(len(self.unanswered))),
            ("broken follow-up turns", str(len(self.broken_follow_ups))),
            (
                "runs a cancel stopped (abort/force): told / client left / NOT told",
                f"{self.stopped_runs}: {self.told} / {self.client_left} / {len(self.not_told)}",
            ),
            *(("  not told, e.g.", line[:200]) for line in self.not_told[:3]),
            ("log lines: " + " / ".join(BAD_LOG_MARKERS), str(len(self.bad_log_lines))),
            ("RSS per round, KB (per worker)", " | ".join(map(str, self.rss_kb))),
            ("RSS growth in the last round, KB", str(self.rss_growth_kb)),
            (
                "cross-worker cancel back after the backend returned, s",
                ", ".join(f"{s:.2f}" for s in self.recovery_s) or "-",
            ),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class Chaos:
    """Random operations against ``workers`` (see the module docstring)."""

    def __init__(
        self,
        workers: Sequence[Worker],
        read_events: EventsReader,
        *,
        seed: int = 0,
        in_flight: int = 8,
        shared_sessions: bool = True,
        stubborn_app: str | None = None,
        user: str = "chaos",
    ) -> None:
        self.workers = list(workers)
        self.read_events = read_events
        self.rng = random.Random(seed)
        self.in_flight = in_flight
        # On a database session store ADK itself fails one of two concurrent runs of a
        # session (StaleSessionError, a 500 without adk-cancel too): keep one run a session.
        self.shared_sessions = shared_sessions
        self.stubborn_app = stubborn_app
        self.user = user
        self.report = ChaosReport()
        self._backend_down = False
        self._busy: set[tuple[str, str]] = set()
        self._sessions: list[tuple[str, str]] = []
        self._log_offsets = [0 for _ in self.workers]
        # Since the last check: what each run's client saw, and each cancel's answer.
        self._seen: list[_Seen] = []
        self._answers: list[_CancelAnswer] = []

    # -- driving ---------------------------------------------------------------------------

    async def round(self, operations: int, *, sessions: int = 12) -> None:
        """``operations`` random operations over ``sessions`` new sessions, then the checks;
        the sessions are deleted afterwards and each worker's RSS recorded."""
        async with httpx.AsyncClient(timeout=60) as client:
            self._sessions = [await self._new_session(client, app) for app in self._apps(sessions)]
            slots = anyio.Semaphore(self.in_flight)
            async with anyio.create_task_group() as tg:
                for _ in range(operations):
                    await slots.acquire()
                    tg.start_soon(self._one, client, slots)
            await self.check(client, self._sessions)
            for app, sid in self._sessions:
                await client.delete(self.workers[0].url + session_path(sid, app, self.user))
        self.report.rss_kb.append([_rss_kb(w.pid) for w in self.workers])

    async def outage(
        self, stop: Callable[[], None], start: Callable[[], None], operations: int
    ) -> None:
        """Stop the cancel backend, run ``operations`` random operations, start it again and
        time until a run held by the first worker can be cancelled through the second."""
        async with httpx.AsyncClient(timeout=60) as client:
            self._sessions = [await self._new_session(client, app) for app in self._apps(8)]
            stop()
            self._backend_down = True
            slots = anyio.Semaphore(self.in_flight)
            async with anyio.create_task_group() as tg:
                for _ in range(operations):
                    await slots.acquire()
                    tg.start_soon(self._one, client, slots)
            start()
            restarted = time.monotonic()
            await self._cross_worker_cancel_works(client)
            self.report.recovery_s.append(time.monotonic() - restarted)
            self._backend_down = False
            await self.check(client, self._sessions)

    def _apps(self, sessions: int) -> list[str]:
        apps = ["slow_agent"] * sessions
        if self.stubborn_app:
            apps[::4] = [self.stubborn_app] * len(apps[::4])
        return apps

    async def _new_session(self, client: httpx.AsyncClient, app: str) -> tuple[str, str]:
        url = self.rng.choice(self.workers).url
        answer = await client.post(f"{url}/apps/{app}/users/{self.user}/sessions", json={})
        answer.raise_for_status()
        return app, str(answer.json()["id"])

    async def _one(self, client: httpx.AsyncClient, slots: anyio.Semaphore) -> None:
        try:
            kind = self.rng.choices(
                ["run", "run_sse", "run_live", "cancel", "runs", "bad"], [4, 4, 2, 4, 1, 1]
            )[0]
            self.report.operations[kind] += 1
            if kind in ("run", "run_sse", "run_live"):
                await self._start_run(client, kind)
            elif kind == "cancel":
                await self._cancel(client)
            elif kind == "runs":
                app, sid = self.rng.choice(self._sessions)
                url = self.rng.choice(self.workers).url
                answer = await client.get(url + session_path(sid, app, self.user) + "/runs")
                self._status(f"GET {app}/{sid}/runs", answer)
            else:
                await self._bad_input(client)
        finally:
            slots.release()

    def _script(self, app: str) -> str:
        if app == self.stubborn_app:
            return f"tool {self.rng.choice([0.5, 1, 2])}"
        return self.rng.choice(
            ["quick", "words 3", "words 8", "tool 0.3", "tool 1", "tool 2", "tool 4"]
        )

    async def _start_run(self, client: httpx.AsyncClient, route: str) -> None:
        free = [s for s in self._sessions if self.shared_sessions or s not in self._busy]
        if not free:
            return
        app, sid = self.rng.choice(free)
        self._busy.add((app, sid))
        url = self.rng.choice(self.workers).url
        # Some clients leave mid-run: their run must be cancelled like any other.
        drop_after = self.rng.choice([None, None, 0.05, 0.3, 1.0])
        seen = _Seen(route, app, sid, time.monotonic())
        self._seen.append(seen)
        try:
            with anyio.move_on_after(drop_after if drop_after is not None else 120) as leaving:
                try:
                    if route == "run_live":
                        await self._live(url, app, sid, drop_after is None, seen)
                    else:
                        await self._http_run(client, url, route, app, sid, seen)
                except httpx.TransportError as exc:
                    # The server broke the answer off (headers, then no body): as bad as a
                    # 5xx for its client, and the other operations go on.
                    seen.saw = f"the connection broken: {type(exc).__name__}: {exc}"
                    self.report.server_errors.append(f"POST /{route} {app}/{sid}: {seen.saw}")
            seen.closed = time.monotonic()
            seen.left = seen.left or leaving.cancelled_caught
            if not self.shared_sessions:
                # A client that left does not know when its run ended (cancelled, sealed):
                # like a careful UI, wait until no worker lists it before the next turn.
                await self._until_idle(client, url, app, sid)
        finally:
            self._busy.discard((app, sid))

    async def _until_idle(self, client: httpx.AsyncClient, url: str, app: str, sid: str) -> None:
        # The run is held by the worker it was sent to: that worker not listing it is
        # enough (its 503 while the backend is down says it holds none itself).
        path = url + session_path(sid, app, self.user) + "/runs"
        with anyio.move_on_after(30):
            while True:
                answer = await client.get(path)
                if answer.status_code == 503 or not answer.json()["runs"]:
                    return
                await anyio.sleep(0.02)

    async def _http_run(
        self,
        client: httpx.AsyncClient,
        url: str,
        route: str,
        app: str,
        sid: str,
        seen: _Seen,
        script: str | None = None,
    ) -> None:
        body = run_body(sid, script or self._script(app), app=app, user=self.user, streaming=True)
        what = f"POST {route} {app}/{sid}"
        if route == "run":
            answer = await client.post(url + "/run", json=body)
            self._status(what, answer)
            seen.run_id = answer.headers.get("x-adk-run-id")
            seen.told = answer.headers.get("x-adk-cancel") == "cancelled"
            header = "x-adk-cancel: cancelled" if seen.told else "no x-adk-cancel header"
            seen.saw = f"{answer.status_code}, {header}"
            return
        async with client.stream("POST", url + "/run_sse", json=body) as answer:
            self._status(what, answer)
            seen.run_id = answer.headers.get("x-adk-run-id")
            seen.saw = f"{answer.status_code}, a stream it left"
            async for line in answer.aiter_lines():
                seen.told = seen.told or line == "event: cancelled"
            end = "event: cancelled" if seen.told else "no event: cancelled"
            seen.saw = f"{answer.status_code}, a stream ending with {end}"

    async def _live(self, url: str, app: str, sid: str, close_after: bool, seen: _Seen) -> None:
        ws_url = url.replace("http", "ws", 1)
        query = f"app_name={app}&user_id={self.user}&session_id={sid}&modalities=TEXT"
        ws: Any = None
        try:
            async with websockets.connect(f"{ws_url}/run_live?{query}") as ws:
                await ws.send(json.dumps({"content": message(self._script(app))}))
                with anyio.move_on_after(
                    self.rng.choice([0.1, 0.5, 1.5]) if close_after else 120
                ) as closing:
                    async for text in ws:
                        _note_invocation(seen, text)
                seen.left = closing.cancelled_caught
        except websockets.InvalidStatus as exc:
            self._record(f"WS /run_live {app}/{sid}", exc.response.status_code, "")
            seen.saw = f"refused with {exc.response.status_code}"
        except (websockets.ConnectionClosed, OSError):
            pass
        if ws is not None and ws.close_code is not None:
            seen.told = ws.close_code == LIVE_CLOSE_CANCELLED
            seen.saw = f"close {ws.close_code} {ws.close_reason!r}"

    async def _cancel(self, client: httpx.AsyncClient) -> None:
        busy = list(self._busy)
        app, sid = (
            self.rng.choice(busy)
            if busy and self.rng.random() < 0.8
            else self.rng.choice(self._sessions)
        )
        url = self.rng.choice(self.workers).url
        body = {"wait": self.rng.random() < 0.7, "reason": "chaos"}
        sent = time.monotonic()
        answer = await client.post(url + session_path(sid, app, self.user) + ":cancel", json=body)
        self._status(f"POST :cancel {app}/{sid}", answer)
        self._note_answer(sent, answer)

    def _note_answer(self, sent: float, answer: httpx.Response) -> None:
        if answer.status_code in (200, 202):
            runs = answer.json().get("runs", [])
            self._answers.append(_CancelAnswer(sent, time.monotonic(), runs))

    async def _bad_input(self, client: httpx.AsyncClient) -> None:
        route, body = self.rng.choice(_BAD_BODIES)
        app, sid = self.rng.choice(self._sessions)
        url = self.rng.choice(self.workers).url
        path = session_path(sid, app, self.user) + ":cancel" if route == ":cancel" else route
        answer = await client.post(
            url + path, content=body, headers={"content-type": "application/json"}
        )
        self._status(f"bad input to {route}", answer)
        if answer.status_code < 400:
            self.report.server_errors.append(f"bad input to {route} accepted: {answer.status_code}")

    def _status(self, what: str, answer: httpx.Response) -> None:
        try:
            text = answer.text[:200]
        except httpx.ResponseNotRead:  # a stream: its status is what counts here
            text = ""
        self._record(what, answer.status_code, text)

    def _record(self, what: str, status: int, text: str) -> None:
        self.report.statuses[str(status)] += 1
        if status >= 500:
            if status == 503 and self._backend_down:
                self.report.outage_503 += 1
            else:
                self.report.server_errors.append(f"{what} -> {status} {text}")

    async def _cross_worker_cancel_works(self, client: httpx.AsyncClient) -> None:
        holder, other = self.workers[0].url, self.workers[-1].url
        app, sid = await self._new_session(client, "slow_agent")
        deadline = time.monotonic() + 60

        seen = _Seen("run", app, sid, time.monotonic())
        self._seen.append(seen)

        async def hold() -> None:
            await self._http_run(client, holder, "run", app, sid, seen, script="tool 30")
            seen.closed = time.monotonic()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            while time.monotonic() < deadline:
                sent = time.monotonic()
                answer = await client.post(other + session_path(sid, app, self.user) + ":cancel")
                self._note_answer(sent, answer)
                if answer.status_code == 200 and all(r["stopped"] for r in answer.json()["runs"]):
                    break
                await anyio.sleep(0.02)
            else:
                raise AssertionError("cross-worker cancel did not work again within 60 s")
        self._sessions.append((app, sid))

    # -- checks ------------------------------------------------------------------------------

    async def check(self, client: httpx.AsyncClient, sessions: list[tuple[str, str]]) -> None:
        """Wait for quiet, then read every invariant back (see the module docstring)."""
        self._check_told()
        for app, sid in sessions:
            path = session_path(sid, app, self.user) + "/runs"
            for worker in self.workers:
                listed: list[dict[str, Any]] = []
                for _ in range(300):  # forced runs may take their grace period to end
                    answer = await client.get(worker.url + path)
                    listed = answer.json().get("runs", []) if answer.status_code == 200 else []
                    if not listed:
                        break
                    await anyio.sleep(0.02)
                self.report.leaked_runs += [f"{app}/{sid}: {r['run_id']}" for r in listed]
        for app, sid in sessions:
            self.report.sessions_checked += 1
            events = await self.read_events(app, self.user, sid)
            self.report.unanswered += [
                f"{app}/{sid}: {call.name} {call.id}" for call in unanswered_calls(events)
            ]
            url = self.rng.choice(self.workers).url
            follow = await client.post(
                url + "/run", json=run_body(sid, "quick", app=app, user=self.user)
            )
            ok = follow.status_code == 200 and "x-adk-cancel" not in follow.headers
            if not ok or "Here is a quick answer." not in follow.text:
                self.report.broken_follow_ups.append(f"{app}/{sid}: {follow.status_code}")
        for i, worker in enumerate(self.workers):
            if worker.log is None:
                continue
            log = worker.log()
            new, self._log_offsets[i] = log[self._log_offsets[i] :], len(log)
            lines = new.splitlines()
            # With the line after it: asyncio's "... never retrieved" says what in its next
            # line ("future: <Future finished exception=...>").
            self.report.bad_log_lines += [
                f"{worker.url}: {line[:300]}"
                + (f" | {lines[n + 1][:300]}" if n + 1 < len(lines) else "")
                for n, line in enumerate(lines)
                if any(marker in line for marker in BAD_LOG_MARKERS)
            ]

    def _check_told(self) -> None:
        """Match each run a cancel answered as stopped to its client, and count whether that
        client was told. The operations are over: every client's record is complete."""
        stopped: dict[str, tuple[dict[str, Any], _CancelAnswer]] = {}
        for answer in self._answers:
            for run in answer.runs:
                if run.get("stopped_by") in STOPPED:
                    stopped.setdefault(str(run["run_id"]), (run, answer))
        by_run_id = {seen.run_id: seen for seen in self._seen if seen.run_id}
        for run_id, (run, answer) in stopped.items():
            self.report.stopped_runs += 1
            seen = by_run_id.get(run_id) or self._client_of(run, answer)
            what = (
                f"{run['route']} run {run_id} ({run.get('session_id')}, "
                f"invocation {run.get('invocation_id')}): stopped_by {run['stopped_by']}"
            )
            if seen is None:
                self.report.not_told.append(f"{what}; no client of it was found")
                continue
            seen.claimed = True
            if seen.told:
                self.report.told += 1
            elif seen.left:
                self.report.client_left += 1
            else:
                self.report.not_told.append(f"{what}; its client saw {seen.saw}")
        self._seen.clear()
        self._answers.clear()

    def _client_of(self, run: dict[str, Any], answer: _CancelAnswer) -> _Seen | None:
        """A run's client where its id does not say (a live client never learns it; an HTTP
        client that left before the headers): of the clients of the run's route and session
        that had connected by the cancel's answer, one whose events carried the run's
        invocation id; else one still connected when the cancel was sent, a told one first
        (of two live runs on a session, either client may be either's); else one that had
        left already (its leaving is a cancel too, which a later one finds still running)."""
        candidates = [
            seen
            for seen in self._seen
            if not seen.claimed
            and seen.run_id is None
            and seen.route == run["route"]
            and seen.sid == run.get("session_id")
            and seen.opened <= answer.answered
        ]
        invocation = run.get("invocation_id")
        pool = (
            [seen for seen in candidates if invocation in seen.invocation_ids]
            or [seen for seen in candidates if seen.closed >= answer.sent]
            or [seen for seen in candidates if seen.left]
        )
        return min(pool, key=lambda seen: (not seen.told, not seen.left)) if pool else None


@contextmanager
def one_worker(agents_dir: str | Path, workdir: Path, *flags: str, **chaos: Any) -> Iterator[Chaos]:
    """One ``adk-cancel api_server`` on ``memory://`` sessions, and a :class:`Chaos` on it
    (``chaos`` are its keyword arguments); the server's log is ``workdir/worker-0.log``."""
    from . import ServerProcess

    args = ("--session_service_uri=memory://", *flags)
    with ServerProcess(agents_dir, *args, log_path=workdir / "worker-0.log") as server:
        worker = Worker(server.url, server.pid, server.log)
        yield Chaos([worker], api_events_reader(server.url), **chaos)


@contextmanager
def two_workers(
    agents_dir: str | Path,
    workdir: Path,
    session_service_uri: str,
    read_events: EventsReader,
    *flags: str,
    **chaos: Any,
) -> Iterator[tuple[Chaos, RedisServer]]:
    """Two ``adk-cancel api_server`` processes sharing the session store at
    ``session_service_uri`` (read back by ``read_events``) through a throwaway Redis, and a
    :class:`Chaos` on them (one run a session at a time: ADK itself fails one of two
    concurrent runs of a session on a database store). Logs: ``workdir/worker-N.log``."""
    from . import RedisServer, ServerProcess, free_port

    with RedisServer(free_port(), workdir) as redis:
        args = (
            f"--session_service_uri={session_service_uri}",
            f"--cancel_backend={redis.url}",
            *flags,
        )
        servers = [
            ServerProcess(agents_dir, *args, log_path=workdir / f"worker-{i}.log") for i in range(2)
        ]
        try:
            for server in servers:
                server.start(wait=False)
            for server in servers:
                server.wait_ready()
            workers = [Worker(s.url, s.pid, s.log) for s in servers]
            yield Chaos(workers, read_events, shared_sessions=False, **chaos), redis
        finally:
            for server in servers:
                server.stop()


@contextmanager
def two_workers_on_sqlite(
    agents_dir: str | Path, workdir: Path, *flags: str, **chaos: Any
) -> Iterator[tuple[Chaos, RedisServer]]:
    """:func:`two_workers` sharing ``workdir/sessions.db``."""
    db = workdir / "sessions.db"
    with two_workers(
        agents_dir, workdir, f"sqlite:///{db}", sqlite_events_reader(db), *flags, **chaos
    ) as pair:
        yield pair


@contextmanager
def two_workers_on_postgres(
    agents_dir: str | Path, workdir: Path, *flags: str, **chaos: Any
) -> Iterator[tuple[Chaos, RedisServer]]:
    """:func:`two_workers` sharing a throwaway PostgreSQL cluster (:class:`PostgresServer`),
    read back through ADK's ``DatabaseSessionService``. Needs the ``postgres`` extra."""
    from . import PostgresServer

    with (
        PostgresServer() as postgres,
        two_workers(
            agents_dir, workdir, postgres.url, database_events_reader(postgres.url), *flags, **chaos
        ) as pair,
    ):
        yield pair


def _note_invocation(seen: _Seen, text: str | bytes) -> None:
    try:
        event = json.loads(text)
    except ValueError:
        return
    if isinstance(event, dict) and isinstance(event.get("invocationId"), str):
        seen.invocation_ids.add(event["invocationId"])


def _rss_kb(pid: int | None) -> int:
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sqlite_events_reader(db_path: str | Path) -> EventsReader:
    """Read sessions straight from a SQLite session file, as a fresh worker would."""

    async def read(app: str, user: str, sid: str) -> list[Any]:
        from google.adk.sessions.sqlite_session_service import SqliteSessionService

        session = await SqliteSessionService(db_path=str(db_path)).get_session(
            app_name=app, user_id=user, session_id=sid
        )
        return list(session.events) if session is not None else []

    return read


def database_events_reader(db_url: str) -> EventsReader:
    """Read sessions through ADK's ``DatabaseSessionService`` on ``db_url`` (PostgreSQL, ...),
    as a fresh worker would. Its engine lives for one read: a reader is called from more
    than one event loop (each ``asyncio.run``), and pooled connections belong to theirs."""

    async def read(app: str, user: str, sid: str) -> list[Any]:
        from google.adk.sessions.database_session_service import DatabaseSessionService

        async with DatabaseSessionService(db_url=db_url) as service:
            session = await service.get_session(app_name=app, user_id=user, session_id=sid)
        return list(session.events) if session is not None else []

    return read


def api_events_reader(url: str) -> EventsReader:
    """Read sessions through a server's ``GET .../sessions/{id}`` (for ``memory://``)."""

    async def read(app: str, user: str, sid: str) -> list[Any]:
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.get(url + session_path(sid, app, user))
        return list(answer.json()["events"]) if answer.status_code == 200 else []

    return read


__all__ = [
    "BAD_LOG_MARKERS",
    "Chaos",
    "ChaosReport",
    "Worker",
    "api_events_reader",
    "database_events_reader",
    "one_worker",
    "sqlite_events_reader",
    "two_workers",
    "two_workers_on_postgres",
    "two_workers_on_sqlite",
]
