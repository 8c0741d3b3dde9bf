"""Rollback: after a cancel with ``action="rollback"``, rewind the session to before the
cancelled run's message, as if the turn never happened.

Once the run has stopped and its session was read back and repaired (so the stored history
is well-formed whatever happens next), the worker holding the run calls ADK's own
``Runner.rewind_async(rewind_before_invocation_id=<the run's invocation>)``: ADK appends a
rewind event that hides the invocation's events from every later prompt and restores the
session's state and artifacts (``app:``, ``user:`` and ``temp:`` state and ``user:``
artifacts are shared beyond the session, and ADK leaves them as they are). The events stay
in storage, hidden, as ADK keeps them.

ADK's rewind knows only the artifact versions that events recorded. A tool cancelled between
saving an artifact and returning leaves a version no event records; rollback undoes those
too (versions saved since the run started: the artifact's earlier content is saved again,
or the artifact is deleted if it had none).

ADK 2.13 bug (google/adk-python #4933, fix unreleased): a rewind sets to None every state
key that no event wrote, so the state given to ``create_session(state=...)`` is lost. The
session's own state is therefore remembered as the run starts (before its message is
stored), and whatever the rewind got wrong is written back in one more event, content-less
(the model never sees it), with ``custom_metadata={"adk_cancel": {"restored_state": keys}}``.

The outcome goes to the cancel's answer, per run: ``rolled_back`` true, or false with
``rollback_error`` saying why (nothing to roll back: the run never stored its message; or
the rewind failed: the session is then left interrupted, sealed and well-formed).
"""

from __future__ import annotations

import copy
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions

from ._registry import RunEntry
from .adk.rewind import InvocationNotFoundError, can_rewind, rewind
from .adk.version import adk_version

if TYPE_CHECKING:
    from google.adk.agents.invocation_context import InvocationContext
    from google.adk.runners import Runner
    from google.adk.sessions.base_session_service import BaseSessionService
    from google.adk.sessions.session import Session

logger = logging.getLogger("adk_cancel")

GetRunner = Callable[[str], Awaitable["Runner"]]
"""The app's runner by app name (ADK's ``AdkWebServer.get_runner_async``)."""

NOTHING = "nothing to roll back"
"""How ``rollback_error`` begins when the session never had the run's message."""

SHARED_PREFIXES = ("app:", "user:", "temp:")
"""State ADK's rewind does not restore (shared beyond the session, or never stored)."""

RETRY_DELAYS_S = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)
"""Pauses before each attempt: a stale write on a shared store usually succeeds at once on a
fresh read."""

_state_before: weakref.WeakKeyDictionary[RunEntry, dict[str, Any]] = weakref.WeakKeyDictionary()


def remember_state(entry: RunEntry, ic: InvocationContext) -> None:
    """Called as the run attaches, before ADK stores its message: the session's own state."""
    own = {k: v for k, v in ic.session.state.items() if not k.startswith(SHARED_PREFIXES)}
    if own:  # an empty state has nothing to restore: nothing kept (most runs, every byte)
        _state_before[entry] = copy.deepcopy(own)


def not_rolled_back(entry: RunEntry, why: str) -> None:
    """Record why a rollback that was asked for did not happen."""
    order = entry.cancel_order
    if order is not None and order.action == "rollback":
        entry.rolled_back = False
        entry.rollback_error = why


def _where(events: list[Event], invocation_id: str) -> Literal["absent", "pending", "done"]:
    """Whether the session holds the invocation, and has already been rewound before it."""
    first = next((i for i, e in enumerate(events) if e.invocation_id == invocation_id), None)
    if first is None:
        return "absent"
    rewound = any(
        e.actions.rewind_before_invocation_id == invocation_id for e in events[first + 1 :]
    )
    return "done" if rewound else "pending"


async def _runner(entry: RunEntry, get_runner: GetRunner | None) -> Runner:
    if get_runner is not None:
        return await get_runner(entry.key.app_name)
    # No ADK web server in reach (an app built without ADK's get_fast_api_app): a runner of
    # the run's own agent and services, used for its rewind only.
    from google.adk.agents.base_agent import BaseAgent
    from google.adk.runners import Runner

    ic = entry.invocation_context
    assert ic is not None and entry.session_service is not None
    root: Any = ic.agent
    kind = "agent" if isinstance(root, BaseAgent) else "node"
    return Runner(
        app_name=entry.key.app_name,
        session_service=entry.session_service,
        artifact_service=ic.artifact_service,
        **{kind: root},
    )


async def roll_back(entry: RunEntry, get_runner: GetRunner | None) -> None:
    """Rewind the cancelled run's session to before its message; sets ``rolled_back``."""
    order = entry.cancel_order
    if order is None or order.action != "rollback":
        return
    service, invocation_id, key = entry.session_service, entry.invocation_id, entry.key
    if service is None or not invocation_id or entry.invocation_context is None:
        not_rolled_back(entry, f"{NOTHING}: the run was stopped before ADK started it")
        return
    last_error: Exception | None = None
    runner: Runner | None = None
    try:
        runner = await _runner(entry, get_runner)
    except Exception as exc:
        last_error = exc
    if runner is not None and not can_rewind(type(runner)):
        not_rolled_back(
            entry,
            f"google-adk {adk_version()} has no Runner.rewind_async: the session is left "
            "interrupted and sealed",
        )
        return
    nothing = f"{NOTHING}: the session holds no event of invocation {invocation_id}"
    for attempt, delay in enumerate(RETRY_DELAYS_S if runner is not None else ()):
        await anyio.sleep(delay)
        try:
            assert runner is not None
            where = "pending"
            if attempt:  # the last attempt may have rewound before it failed: read first
                session = await _read(service, entry)
                where = _where(session.events, invocation_id) if session is not None else ""
            if where == "absent":
                not_rolled_back(entry, nothing)
                return
            if where == "pending":
                await rewind(
                    runner,
                    user_id=key.user_id,
                    session_id=key.session_id,
                    before_invocation_id=invocation_id,
                )
            # One read of the rewound session serves both corrections.
            after = await _read(service, entry)
            if after is None:
                not_rolled_back(entry, "the session was deleted meanwhile")
                return
            await _undo_unrecorded_artifacts(entry, runner, after)
            await _restore_state(service, entry, after)
            entry.rolled_back, entry.rollback_error = True, None
            return
        except InvocationNotFoundError:
            not_rolled_back(entry, nothing)
            return
        except Exception as exc:
            last_error = exc
            logger.debug("Rollback of session %s failed; retrying", key.session_id, exc_info=True)
    why = f"the rewind failed ({type(last_error).__name__}: {last_error})"
    not_rolled_back(entry, why + "; the session is left interrupted and sealed")
    logger.error(
        "adk-cancel: could not roll back run %s of session %s: %s",
        entry.run_id,
        key.session_id,
        why,
        exc_info=last_error,
    )


async def _read(service: BaseSessionService, entry: RunEntry) -> Session | None:
    key = entry.key
    return await service.get_session(
        app_name=key.app_name, user_id=key.user_id, session_id=key.session_id
    )


async def _undo_unrecorded_artifacts(entry: RunEntry, runner: Runner, session: Session) -> None:
    """Undo the artifact versions the run saved that no event of the rewound ``session``
    records (ADK's rewind event records the versions it restored)."""
    artifacts = runner.artifact_service
    if artifacts is None:
        return
    key = entry.key
    scope: dict[str, Any] = {
        "app_name": key.app_name,
        "user_id": key.user_id,
        "session_id": key.session_id,
    }
    recorded = {
        (name, version)
        for e in session.events
        for name, version in e.actions.artifact_delta.items()
    }
    for name in await artifacts.list_artifact_keys(**scope):
        if name.startswith("user:"):
            continue  # shared beyond the session: ADK's rewind leaves them too
        versions = await artifacts.list_artifact_versions(filename=name, **scope)
        if not versions:
            continue
        latest = max(versions, key=lambda v: v.version)
        if (name, latest.version) in recorded or latest.create_time < entry.started_at:
            continue
        earlier = [v for v in versions if v.create_time < entry.started_at]
        if not earlier:
            await artifacts.delete_artifact(filename=name, **scope)
            continue
        before = max(earlier, key=lambda v: v.version)
        content = await artifacts.load_artifact(filename=name, version=before.version, **scope)
        if content is not None:
            await artifacts.save_artifact(filename=name, artifact=content, **scope)


async def _restore_state(service: BaseSessionService, entry: RunEntry, session: Session) -> None:
    """Write back the session state the rewind got wrong (ADK #4933)."""
    before = _state_before.get(entry)
    if not before:
        return
    fix = {k: v for k, v in before.items() if session.state.get(k) != v}
    if not fix:
        return
    await service.append_event(
        session=session,
        event=Event(
            invocation_id=f"e-{uuid.uuid4()}",
            author="user",
            actions=EventActions(state_delta=fix),
            custom_metadata={"adk_cancel": {"restored_state": sorted(fix)}},
        ),
    )
