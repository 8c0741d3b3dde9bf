"""The ``:cancel`` routes (a session's runs, a user's runs) and ``/runs``."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ._json_depth import too_deep_answer
from ._models import (
    CancelledRun,
    CancelRequest,
    CancelResponse,
    CancelScope,
    RemainingRun,
    RunInfo,
    RunsResponse,
    SessionKey,
    UserCancelResponse,
)
from ._order import CancelOrder
from ._records import STATUS_FILTERS, parse_status
from ._registry import RunRegistry
from .backends import BackendUnavailable

SESSION_PATH = "/apps/{app_name}/users/{user_id}/sessions/{session_id}"
CANCEL_PATH = SESSION_PATH + ":cancel"
RUNS_PATH = SESSION_PATH + "/runs"
USER_CANCEL_PATH = "/apps/{app_name}/users/{user_id}:cancel"
DEFAULT_REASON = "cancelled by request"
ECHO_CHARS = 80
"""How much of a rejected input value a 422 answer repeats."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No worker holds an active run for this session."},
    422: {
        "description": "The body is not a valid CancelRequest: not JSON, not UTF-8, nested "
        "too deep, or a field out of range. Each error names the field (`loc`) and why."
    },
    503: {"description": "The cancel backend (e.g. Redis) is unreachable."},
}
_USER_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    404: {"description": "No worker holds an active run of this user in this app."},
}
_RUNS_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "``status`` is not a run status (or a comma-separated list of them)."},
    503: _ERRORS[503],
}


_ONE_STATUS = "(" + "|".join(STATUS_FILTERS) + ")"
_STATUS_PATTERN = f"^{_ONE_STATUS}(,{_ONE_STATUS})*$"
"""``?status=``: one name of ``STATUS_FILTERS``, or several comma-separated."""


def _no_run(key: SessionKey) -> HTTPException:
    return HTTPException(
        status_code=404,
        detail=f"No active run for session {key.session_id!r} of user {key.user_id!r} "
        f"in app {key.app_name!r}.",
    )


def _no_user_run(app_name: str, user_id: str) -> HTTPException:
    return HTTPException(
        status_code=404, detail=f"No active run for user {user_id!r} in app {app_name!r}."
    )


def _remaining(runs: list[RunInfo], cancelled: list[CancelledRun]) -> list[RemainingRun]:
    """The listed runs a cancel did not stop (nor was stopping)."""
    done = {r.run_id for r in cancelled}
    return [
        RemainingRun(
            run_id=r.run_id,
            invocation_id=r.invocation_id,
            route=r.route,
            session_id=r.session_id,
            worker=r.worker,
        )
        for r in runs
        if r.run_id not in done
    ]


def _warning(remaining: list[RemainingRun], scope: str, narrow: bool) -> str | None:
    if not remaining:
        return None
    n = len(remaining)
    runs, verb = ("run", "is") if n == 1 else ("runs", "are")
    if narrow:
        return (
            f"{n} other {runs} of this {scope} {verb} still active (listed in "
            "remaining_active): cancel without invocation_id or run_id to stop every one."
        )
    return (
        f"{n} {runs} of this {scope} started while it was being cancelled and {verb} still "
        "active (listed in remaining_active): cancel again to stop them."
    )


def _unreachable(exc: BackendUnavailable) -> str:
    return (
        f"Other server workers could not be reached: {exc}. Only this worker's runs are in "
        "this answer; retry once the cancel backend is back."
    )


def _unavailable(exc: BackendUnavailable) -> HTTPException:
    return HTTPException(status_code=503, detail=_unreachable(exc))


def _echo(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


_EXAMPLE = '{"reason": "user pressed stop"}'
_FIELDS = ", ".join(CancelRequest.model_fields)

_PLAIN_WORDS: dict[str, str] = {
    "bool_type": "must be a JSON boolean: true or false",
    "string_type": "must be a JSON string",
    "float_type": "must be a JSON number (seconds)",
    "float_parsing": "must be a JSON number (seconds)",
    "finite_number": "must be a finite JSON number (seconds)",
    "extra_forbidden": f"is not a field of a cancel request (the fields: {_FIELDS})",
    "model_attributes_type": f"the body must be a JSON object, such as {_EXAMPLE}",
    "dict_type": f"the body must be a JSON object, such as {_EXAMPLE}",
    "model_type": f"the body must be a JSON object, such as {_EXAMPLE}",
}
"""What a client author reads for pydantic's error types, instead of "Input should be a
valid dictionary" and the like."""


def _read_as_json(request: Request) -> Request:
    """The request, its body read as JSON whatever its content-type says: a cancel body is
    JSON or nothing, and ``curl -d '{...}'`` (form-encoded) or a client that sends no
    content-type meant JSON, not a 422 about a "dictionary"."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        return request
    headers = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"content-type"]
    scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
    return Request(scope, request.receive)


def _invalid(errors: list[dict[str, Any]], body: bytes | None = None) -> JSONResponse:
    # FastAPI's own 422 repeats each input whole, and cannot render some at all (NaN, a lone
    # surrogate): a 500 in place of the 422. Repeat a short, always-renderable repr instead.
    detail = [_plain(error, body) for error in errors]
    return JSONResponse({"detail": detail}, status_code=422)


def _plain(error: dict[str, Any], body: bytes | None) -> dict[str, Any]:
    kind = str(error.get("type", "value_error"))
    loc = [str(part) for part in error.get("loc", ())]
    msg = str(error.get("msg", "invalid"))
    shown: Any = error.get("input")
    if kind == "json_invalid":
        # FastAPI puts the parser's character offset in ``loc`` and an empty object in
        # ``input``: say where the JSON broke, and show the body itself.
        at = loc[1] if len(loc) > 1 else "?"
        why = (error.get("ctx") or {}).get("error", "invalid JSON")
        loc = ["body"]
        msg = (
            f"The body is not valid JSON ({why} at character {at}): send a JSON object such "
            f"as {_EXAMPLE}"
        )
        shown = (body or b"").decode("utf-8", "replace")
    elif kind in _PLAIN_WORDS:
        field = loc[-1] if len(loc) > 1 else "body"
        msg = _PLAIN_WORDS[kind] if field == "body" else f"{field} {_PLAIN_WORDS[kind]}"
    return {
        "loc": loc,
        "msg": msg,
        "type": kind,
        **({"input": _echo(shown)} if "input" in error or kind == "json_invalid" else {}),
    }


class _Route(APIRoute):
    """Our routes answer every malformed body with a 422 that can always be rendered."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            request = _read_as_json(request)
            # Before FastAPI parses it: its parser, its errors and its 422 handler recurse.
            if (too_deep := too_deep_answer(await request.body())) is not None:
                return JSONResponse(too_deep, status_code=422)
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _invalid(list(exc.errors()), await request.body())
            except StarletteHTTPException as exc:
                if exc.status_code != 400:
                    raise
                # FastAPI's "There was an error parsing the body": not UTF-8, nested too
                # deep for the JSON parser. The same kind of error as bad JSON: a 422.
                return _invalid(
                    [
                        {
                            "loc": ["body"],
                            "msg": "The body is not a JSON document this server can read "
                            "(not UTF-8, or nested too deep): send a JSON object such as "
                            '{"reason": "user pressed stop"}',
                            "type": "json_invalid",
                        }
                    ]
                )

        return guarded


def _order(
    request: CancelRequest, registry: RunRegistry, key: SessionKey, scope: CancelScope = "session"
) -> CancelOrder:
    """The order a validated cancel body gives, for a session or (``scope="user"``, a key
    with no session) every session of a user."""
    return CancelOrder(
        key=key,
        reason=request.reason or DEFAULT_REASON,
        invocation_id=request.invocation_id,
        run_id=request.run_id,
        wait=request.wait,
        timeout_s=request.timeout_s or registry.default_timeout_s(),
        action=request.action,
        scope=scope,
    )


def build_router(registry: RunRegistry) -> APIRouter:
    router = APIRouter(tags=["adk-cancel"], route_class=_Route)

    @router.post(
        CANCEL_PATH,
        response_model=CancelResponse,
        responses={202: {"model": CancelResponse}, **_ERRORS},
        summary="Stop the runs in flight for a session",
    )
    async def cancel_session_runs(
        app_name: str,
        user_id: str,
        session_id: str,
        body: Annotated[CancelRequest | None, Body()] = None,
    ) -> JSONResponse:
        request = body or CancelRequest()
        key = SessionKey(app_name, user_id, session_id)
        order = _order(request, registry, key)
        runs, error = await registry.cancel_everywhere(order)
        if not runs:
            raise _unavailable(error) if error is not None else _no_run(key)
        remaining: list[RemainingRun] = []
        if order.invocation_id is not None or order.run_id is not None:
            # A narrow cancel: say what it left running (this worker's alone if the
            # backend is down; the answer says so in ``unreachable``).
            remaining = _remaining((await registry.runs_everywhere(key))[0], runs)
        answer = CancelResponse(
            status="cancelled" if request.wait else "cancelling",
            app_name=app_name,
            user_id=user_id,
            session_id=session_id,
            reason=order.reason,
            runs=runs,
            unreachable=None if error is None else _unreachable(error),
            remaining_active=remaining,
            warning=_warning(remaining, "session", narrow=True),
        )
        return JSONResponse(
            answer.model_dump(mode="json"), status_code=200 if request.wait else 202
        )

    @router.post(
        USER_CANCEL_PATH,
        response_model=UserCancelResponse,
        responses={202: {"model": UserCancelResponse}, **_USER_ERRORS},
        summary="Stop every run in flight of one user in one app, on every worker",
    )
    async def cancel_user_runs(
        app_name: str,
        user_id: str,
        body: Annotated[CancelRequest | None, Body()] = None,
    ) -> JSONResponse:
        request = body or CancelRequest()
        order = _order(request, registry, SessionKey(app_name, user_id, ""), scope="user")
        runs, error = await registry.cancel_everywhere(order)
        if not runs:
            if error is not None:
                raise _unavailable(error)
            raise _no_user_run(app_name, user_id)
        # Runs the cancel did not name (another invocation), or that started meanwhile.
        listed, _ = await registry.user_runs_everywhere(app_name, user_id)
        remaining = _remaining(listed, runs)
        answer = UserCancelResponse(
            status="cancelled" if request.wait else "cancelling",
            app_name=app_name,
            user_id=user_id,
            sessions=sorted({r.session_id for r in runs if r.session_id is not None}),
            reason=order.reason,
            runs=runs,
            unreachable=None if error is None else _unreachable(error),
            remaining_active=remaining,
            warning=_warning(
                remaining,
                "user",
                narrow=order.invocation_id is not None or order.run_id is not None,
            ),
        )
        return JSONResponse(
            answer.model_dump(mode="json"), status_code=200 if request.wait else 202
        )

    @router.get(
        RUNS_PATH,
        response_model=RunsResponse,
        responses=_RUNS_ERRORS,
        summary="List a session's runs in flight, on every worker (and recent ones, by status)",
    )
    async def list_session_runs(
        app_name: str,
        user_id: str,
        session_id: str,
        status: Annotated[
            str | None,
            Query(
                description="Which runs: active (the default: queued, running, cancelling), "
                "all (with the records of recent runs), or any of "
                f"{', '.join(STATUS_FILTERS[2:])}; several comma-separated.",
                max_length=200,
                # The schema says exactly what the route takes (it also takes these in any
                # case, with spaces): generated clients and schema-driven tests agree with it.
                json_schema_extra={"pattern": _STATUS_PATTERN, "examples": ["all"]},
            ),
        ] = None,
    ) -> RunsResponse | JSONResponse:
        try:
            wanted = parse_status(status)
        except ValueError as exc:
            return _invalid([{"loc": ["query", "status"], "msg": str(exc), "input": status}])
        key = SessionKey(app_name, user_id, session_id)
        runs, error = await registry.runs_everywhere(key)
        if error is not None and not runs:
            # Nothing known here, and the other workers can't be asked: not "no runs".
            raise _unavailable(error)
        if not wanted.isdisjoint(("cancelled", "finished", "failed", "timed_out")):
            records, records_error = await registry.records.everywhere(key)
            error = error or records_error
            # A record is final: it wins over a listing another worker has not withdrawn yet.
            ended = {r.run_id for r in records}
            runs = [r for r in runs if r.run_id not in ended] + records
        return RunsResponse(
            app_name=app_name,
            user_id=user_id,
            session_id=session_id,
            runs=[r for r in runs if r.status in wanted],
            unreachable=None if error is None else _unreachable(error),
        )

    return router


def add_routes_first(app: FastAPI, router: APIRouter) -> None:
    """Include ``router`` ahead of ADK's routes: ADK's deprecated
    ``POST .../sessions/{session_id}`` would otherwise take ``x:cancel`` as a session id."""
    before = len(app.router.routes)
    app.include_router(router)
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
