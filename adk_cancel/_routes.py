"""The ``:cancel`` and ``/runs`` routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, HTTPException
from fastapi.responses import JSONResponse

from ._models import CancelRequest, CancelResponse, RunsResponse, SessionKey
from ._order import CancelOrder
from ._registry import RunRegistry
from .backends import BackendUnavailable

SESSION_PATH = "/apps/{app_name}/users/{user_id}/sessions/{session_id}"
CANCEL_PATH = SESSION_PATH + ":cancel"
RUNS_PATH = SESSION_PATH + "/runs"
DEFAULT_REASON = "cancelled by request"

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No worker holds an active run for this session."},
    422: {"description": "The body is not a valid CancelRequest."},
    503: {"description": "The cancel backend (e.g. Redis) is unreachable."},
}


def _no_run(key: SessionKey) -> HTTPException:
    return HTTPException(
        status_code=404,
        detail=f"No active run for session {key.session_id!r} of user {key.user_id!r} "
        f"in app {key.app_name!r}.",
    )


def _unreachable(exc: BackendUnavailable) -> str:
    return (
        f"Other server workers could not be reached: {exc}. Runs held by this worker were "
        "handled; retry once the cancel backend is back."
    )


def _unavailable(exc: BackendUnavailable) -> HTTPException:
    return HTTPException(status_code=503, detail=_unreachable(exc))


def build_router(registry: RunRegistry) -> APIRouter:
    router = APIRouter(tags=["adk-cancel"])

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
        order = CancelOrder(
            key=key,
            reason=request.reason or DEFAULT_REASON,
            invocation_id=request.invocation_id,
            wait=request.wait,
            timeout_s=request.timeout_s or registry.default_timeout_s(),
        )
        runs, error = await registry.cancel_everywhere(order)
        if not runs:
            raise _unavailable(error) if error is not None else _no_run(key)
        answer = CancelResponse(
            status="cancelled" if request.wait else "cancelling",
            app_name=app_name,
            user_id=user_id,
            session_id=session_id,
            reason=order.reason,
            runs=runs,
            unreachable=None if error is None else _unreachable(error),
        )
        return JSONResponse(
            answer.model_dump(mode="json"), status_code=200 if request.wait else 202
        )

    @router.get(
        RUNS_PATH,
        response_model=RunsResponse,
        responses={503: _ERRORS[503]},
        summary="List a session's runs in flight, on every worker",
    )
    async def list_session_runs(app_name: str, user_id: str, session_id: str) -> RunsResponse:
        key = SessionKey(app_name, user_id, session_id)
        try:
            runs = await registry.runs_everywhere(key)
        except BackendUnavailable as exc:
            raise _unavailable(exc) from exc
        return RunsResponse(app_name=app_name, user_id=user_id, session_id=session_id, runs=runs)

    return router


def add_routes_first(app: FastAPI, router: APIRouter) -> None:
    """Include ``router`` ahead of ADK's routes: ADK's deprecated
    ``POST .../sessions/{session_id}`` would otherwise take ``x:cancel`` as a session id."""
    before = len(app.router.routes)
    app.include_router(router)
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
