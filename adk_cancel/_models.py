"""Request and response models of the cancel and list routes (public through ``__all__``)."""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

Route = Literal["run", "run_sse", "run_live"]
"""Which ADK route started a run."""

CancelCause = Literal["request", "disconnect", "shutdown", "deadline", "busy"]
"""Who or what cancelled a run: a ``:cancel`` request, the client leaving, the server
shutting down, a run deadline, or the session's busy policy (a newer run replacing it)."""

CancelAction = Literal["interrupt", "rollback"]
"""What a cancel leaves in the session: the interrupted turn (sealed), or nothing of it."""

RunStatus = Literal[
    "queued", "running", "cancelling", "cancelled", "finished", "failed", "timed_out"
]
"""Where a run is: active (``queued``, ``running``, ``cancelling``), or how it ended, in its
record (``cancelled``, ``finished``, ``failed``, ``timed_out``: a run or idle deadline)."""

ACTIVE_STATUSES: tuple[RunStatus, ...] = ("queued", "running", "cancelling")
ENDED_STATUSES: tuple[RunStatus, ...] = ("cancelled", "finished", "failed", "timed_out")

CancelScope = Literal["session", "user"]
"""What a cancel order covers: one session's runs, or every run of one user in one app."""

DisconnectPolicy = Literal["cancel", "continue"]
"""What a run's client leaving does: cancel the run (ADK's behaviour), or let it go on, its
events kept so that any client can rejoin its stream."""

OnBusy = Literal["allow", "reject", "interrupt", "rollback", "enqueue"]
"""What a new run does when its session already has an active run (see ``_busy.py``)."""

StoppedBy = Literal["abort", "force", "finished", "error", "queued"]
"""How a run ended after a cancel: ADK's cooperative abort, a forced task cancel, it
finished on its own before the cancel took hold, it raised on its way out (logged; the
session was repaired and the client got a cancelled answer), or it was still queued behind
another run of its session (it never started)."""


class SessionKey(NamedTuple):
    """The full path of a session: runs are scoped by all three parts."""

    app_name: str
    user_id: str
    session_id: str


class CancelRequest(BaseModel):
    """Optional JSON body of ``POST .../sessions/{session_id}:cancel``."""

    # Strict: JSON types as they are ("yes" is no boolean, "5" no number of seconds).
    model_config = ConfigDict(extra="forbid", strict=True)

    invocation_id: str | None = Field(
        default=None, min_length=1, description="Cancel only this invocation of the session."
    )
    run_id: str | None = Field(
        default=None,
        min_length=1,
        description="Cancel only this run, as GET .../runs lists it (a queued run has no "
        "invocation id yet).",
    )
    reason: str | None = Field(
        default=None, max_length=500, description="Shown to the run's client and logged."
    )
    wait: bool = Field(
        default=True,
        description="Wait until every run has stopped (200), or answer once the cancel is "
        "signalled (202).",
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="With wait=true, answer after this long even if a run has not stopped.",
    )
    action: CancelAction = Field(
        default="interrupt",
        description="interrupt: the session keeps the stopped turn, sealed, with the text "
        "streamed so far; rollback: the session is rewound to before the turn's message "
        "(events the model sees, state, artifacts).",
    )


def is_unicode_text(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8 (JSON allows lone surrogates; UTF-8 not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RunInfo(BaseModel):
    """One active run of a session."""

    run_id: str
    app_name: str
    user_id: str
    session_id: str
    invocation_id: str | None = None
    route: Route
    started_at: float = Field(description="Unix time the run started.")
    elapsed_ms: float = 0.0
    worker: str = Field(description="Id of the server process that holds the run.")
    cancelling: bool = False
    status: RunStatus = "running"
    on_disconnect: DisconnectPolicy = Field(
        default="cancel",
        description="What its client leaving does; with continue, a /run_sse run's events "
        "can be rejoined (GET .../runs/{run_id}/events).",
    )
    detached: bool = Field(
        default=False,
        description="The run's client left and the run went on (disconnect policy continue); "
        "in a record: nobody was attached when it ended.",
    )
    # Set in a run's record, once it has ended (``?status=`` on ``/runs``); None while active.
    ended_at: float | None = Field(default=None, description="Unix time the run ended.")
    cancelled_at: float | None = Field(
        default=None, description="Unix time the cancel (or deadline) reached the run."
    )
    cancel_reason: str | None = None
    cancelled_by: CancelCause | None = Field(
        default=None,
        description="Who or what cancelled it: request (a :cancel), disconnect, shutdown, "
        "deadline or busy.",
    )
    stopped_by: StoppedBy | None = None
    stop_ms: float | None = None
    repaired: bool | None = None
    rolled_back: bool | None = Field(
        default=None, description="Whether a rollback cancel removed the turn (None: none asked)."
    )
    rollback_error: str | None = None
    error: str | None = Field(default=None, description="Why a failed run failed.")
    on_busy: OnBusy | None = Field(
        default=None,
        description="The busy policy the run was admitted under; under any but allow it is "
        "the only run of its session while it runs.",
    )


class CancelledRun(BaseModel):
    """The outcome of cancelling one run."""

    run_id: str
    session_id: str | None = Field(default=None, description="The run's session.")
    invocation_id: str | None = None
    route: Route
    worker: str
    stopped: bool = Field(description="False when wait=false, or when the wait timed out.")
    stopped_by: StoppedBy | None = None
    stop_ms: float | None = Field(
        default=None, description="From the cancel request to the run's task having ended."
    )
    repaired: bool = Field(
        default=False,
        description="True when adk-cancel answered function calls the run left open (a "
        "forced or live run, or ADK's own seal missing from the stored session).",
    )
    rolled_back: bool | None = Field(
        default=None,
        description="With action=rollback: whether the session was rewound to before the "
        "run's message (null: no rollback was asked).",
    )
    rollback_error: str | None = Field(
        default=None,
        description="Why it was not rolled back (nothing to roll back, or the rewind "
        "failed: the session is then left interrupted and well-formed).",
    )


class RemainingRun(BaseModel):
    """An active run a narrow cancel did not stop."""

    run_id: str
    invocation_id: str | None = None
    route: Route
    session_id: str
    worker: str


_REMAINING_HELP = (
    "Active runs in the cancel's scope that it did not stop (a cancel naming an invocation_id "
    "leaves the session's other runs going)."
)
_WARNING = Field(default=None, description="One line on what remaining_active means.")
_UNREACHABLE = Field(
    default=None,
    description="Set when other workers could not be reached (the cancel backend is "
    "down): only this worker's runs were cancelled; retry once the backend is back.",
)


class CancelResponse(BaseModel):
    """Answer of the cancel route."""

    status: Literal["cancelled", "cancelling"]
    app_name: str
    user_id: str
    session_id: str
    reason: str
    runs: list[CancelledRun]
    unreachable: str | None = _UNREACHABLE
    remaining_active: list[RemainingRun] = Field(default_factory=list, description=_REMAINING_HELP)
    warning: str | None = _WARNING


class UserCancelResponse(BaseModel):
    """Answer of ``POST /apps/{app}/users/{user}:cancel``."""

    status: Literal["cancelled", "cancelling"]
    app_name: str
    user_id: str
    sessions: list[str] = Field(description="The sessions whose runs were cancelled.")
    reason: str
    runs: list[CancelledRun]
    unreachable: str | None = _UNREACHABLE
    remaining_active: list[RemainingRun] = Field(default_factory=list, description=_REMAINING_HELP)
    warning: str | None = _WARNING


class BusyResponse(BaseModel):
    """A run refused by its session's busy policy: 409 (``reject``) or 429 (the queue of
    ``enqueue`` is full)."""

    detail: str
    on_busy: OnBusy
    runs: list[RunInfo] = Field(description="The session's active and queued runs.")


class RunsResponse(BaseModel):
    """Answer of ``GET .../sessions/{session_id}/runs``: the active runs, and with
    ``?status=`` the records of the session's recent runs too (newest first)."""

    app_name: str
    user_id: str
    session_id: str
    runs: list[RunInfo]
    unreachable: str | None = Field(
        default=None,
        description="Set when other workers could not be reached (the cancel backend is "
        "down): only this worker's runs are listed.",
    )
