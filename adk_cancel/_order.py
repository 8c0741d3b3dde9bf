"""The cancel order: one value that travels from whoever cancels to the worker holding the run.

A ``:cancel`` request, a client disconnect and a server shutdown each build one
``CancelOrder``; the registry, every backend and the Redis wire message carry it unchanged,
so a new field (an action, a cause) is added here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from ._models import CancelAction, CancelCause, CancelScope, SessionKey


@dataclass(frozen=True)
class CancelOrder:
    """Stop the runs of one session (or one invocation of it), or of one user.

    A user-wide order (``CancelOrder.for_user``) has ``scope="user"`` and a key whose
    ``session_id`` is ``""``: it covers every session of that user in that app, and nothing
    else. A worker that predates ``scope`` reads such an order as one for the session ``""``,
    which matches no run: an old worker misses a user-wide cancel, it never widens one.
    """

    key: SessionKey
    """Whose runs: a run of another app, user or session is never touched."""
    reason: str
    """Shown to the run's client and logged."""
    invocation_id: str | None = None
    """Only this invocation of the session; ``None``: every run of it."""
    wait: bool = True
    """Answer once every run has stopped (and its session is sealed), or once signalled."""
    timeout_s: float = 5.0
    """With ``wait``: answer after this long even if a run has not stopped."""
    action: CancelAction = "interrupt"
    """What the session keeps of the cancelled turn."""
    cause: CancelCause = "request"
    """Who or what cancels: shown in run records and metrics."""
    run_id: str | None = None
    """Only this run (as ``/runs`` lists it: a queued run has no invocation id yet)."""
    scope: CancelScope = "session"
    """``session``: the runs of ``key``; ``user``: every run of ``key``'s app and user."""

    @classmethod
    def for_user(cls, app_name: str, user_id: str, reason: str, **fields: Any) -> CancelOrder:
        """An order for every run of one user in one app, on every session."""
        return cls(SessionKey(app_name, user_id, ""), reason, scope="user", **fields)

    def covers(self, key: SessionKey) -> bool:
        """Whether runs of the session ``key`` are within the order's scope."""
        if self.scope == "user":
            return key.app_name == self.key.app_name and key.user_id == self.key.user_id
        return key == self.key

    def matches(self, invocation_id: str | None, run_id: str | None = None) -> bool:
        """Whether a run with this invocation id (and run id) is one the order is for."""
        return (self.invocation_id is None or self.invocation_id == invocation_id) and (
            self.run_id is None or self.run_id == run_id
        )

    def to_json(self) -> bytes:
        return _WIRE.dump_json(self)

    @classmethod
    def from_json(cls, data: str | bytes) -> CancelOrder:
        """Parse an order sent by another worker; raises ``pydantic.ValidationError``."""
        return _WIRE.validate_json(data)


_WIRE: TypeAdapter[CancelOrder] = TypeAdapter(CancelOrder)
