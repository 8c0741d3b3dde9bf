"""The server's cancellation options: one frozen value, from the caller to every part.

``install(app, **options)``, ``get_fast_api_app(**options, **adk_kwargs)`` and the CLI's flags
(``--cancel_backend`` ...) all take these names; each field's ``help`` is the CLI's help text.
A new option is one field here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, get_args

from ._models import OnBusy
from .backends import check_backend_url

if TYPE_CHECKING:
    from .backends import CancelBackend

DEFAULT_GRACE_S = 2.0
"""How long a cooperative abort may take before the run's task is cancelled by force."""

DEFAULT_SHUTDOWN_GRACE_S = 10.0
"""How long active runs may go on after SIGINT/SIGTERM before they are cancelled."""


def _seconds(name: str, value: float) -> None:
    if not isinstance(value, int | float) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class CancelOptions:
    """How adk-cancel behaves on one app."""

    cancel_backend: str | CancelBackend = field(
        default="memory://",
        metadata={
            "help": "Where runs are registered: memory:// (one process) or "
            "redis://host:port/db, rediss://..., unix:///path (cancel across workers)."
        },
    )
    cancel_grace_s: float = field(
        default=DEFAULT_GRACE_S,
        metadata={
            "help": "Seconds a cooperative abort may take before the run's task is cancelled."
        },
    )
    cancel_node_id: str | None = field(
        default=None,
        metadata={
            "help": "This worker's id in run listings and cancel answers "
            "(default: host:pid:random)."
        },
    )
    shutdown_grace_s: float = field(
        default=DEFAULT_SHUTDOWN_GRACE_S,
        metadata={
            "help": "On SIGINT/SIGTERM, seconds active runs may go on before they are "
            "cancelled (0: cancel at once)."
        },
    )
    chat: bool = field(
        default=False, metadata={"help": "Serve the chat page with a Stop button at /chat."}
    )
    on_busy: OnBusy = field(
        default="allow",
        metadata={
            "help": "What a run does when its session already has one, on any worker: allow "
            "(run both, as ADK does), reject (409), interrupt (cancel it, then start), "
            "rollback (cancel it and undo its turn, then start), enqueue (wait for it). "
            "Per request: the X-ADK-On-Busy header (/run_live: also ?on_busy=)."
        },
    )
    max_queued: int = field(
        default=10,
        metadata={"help": "With enqueue: runs that may wait per session (more: 429)."},
    )
    keep_partial: bool = field(
        default=True,
        metadata={
            "help": "After an interrupt, store the text the run had streamed to its client "
            "as an interrupted model event, so a reload shows it and the model knows it."
        },
    )

    def __post_init__(self) -> None:
        _seconds("cancel_grace_s", self.cancel_grace_s)
        _seconds("shutdown_grace_s", self.shutdown_grace_s)
        if self.on_busy not in get_args(OnBusy):
            raise ValueError(
                f"on_busy must be one of {', '.join(get_args(OnBusy))}, got {self.on_busy!r}"
            )
        if isinstance(self.max_queued, bool) or not isinstance(self.max_queued, int):
            raise ValueError(f"max_queued must be a whole number >= 1, got {self.max_queued!r}")
        if self.max_queued < 1:
            raise ValueError(f"max_queued must be a whole number >= 1, got {self.max_queued!r}")
        if isinstance(self.cancel_backend, str):
            check_backend_url(self.cancel_backend)

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[CancelOptions, dict[str, Any]]:
        """Our options out of a mix of ours and ADK's keyword arguments."""
        names = cls.names()
        ours = {k: v for k, v in kwargs.items() if k in names}
        return cls(**ours), {k: v for k, v in kwargs.items() if k not in names}
