"""The server's cancellation options: one frozen value, from the caller to every part.

``install(app, **options)``, ``get_fast_api_app(**options, **adk_kwargs)`` and the CLI's flags
(``--cancel_backend`` ...) all take these names; each field's ``help`` is the CLI's help text.
A new option is one field here.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, get_args

from ._models import DisconnectPolicy, OnBusy
from .backends import check_backend_url

if TYPE_CHECKING:
    from .backends import CancelBackend

DEFAULT_GRACE_S = 2.0
"""How long a cooperative abort may take before the run's task is cancelled by force."""

DEFAULT_SHUTDOWN_GRACE_S = 10.0
"""How long active runs may go on after SIGINT/SIGTERM before they are cancelled."""

DEFAULT_STREAM_MAX_EVENTS = 10_000
DEFAULT_STREAM_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_STREAM_KEEP_S = 300.0
"""A rejoinable run's event log: at most this many events and bytes (the oldest drop
first), kept this long after the run ended."""


DEFAULT_RECORDS_PER_SESSION = 50
DEFAULT_RECORDS_TTL_S = 3600.0


def _seconds(name: str, value: float) -> None:
    if not isinstance(value, int | float) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")


def _limit(name: str, value: float | None) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        raise ValueError(
            f"{name} must be a number of seconds > 0 (or unset: no limit), got {value!r}"
        )


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
    on_disconnect: DisconnectPolicy = field(
        default="cancel",
        metadata={
            "help": "What a /run or /run_sse client leaving does: cancel the run, or let it "
            "continue (its /run_sse events kept for rejoining). A request's "
            "X-ADK-On-Disconnect header overrides it."
        },
    )
    stream_max_events: int = field(
        default=DEFAULT_STREAM_MAX_EVENTS,
        metadata={
            "help": "Events kept per rejoinable run; beyond it the oldest drop, and a rejoin "
            "from before them is answered 410."
        },
    )
    stream_max_bytes: int = field(
        default=DEFAULT_STREAM_MAX_BYTES,
        metadata={
            "help": "Bytes kept per rejoinable run (the newest event is always kept); beyond "
            "it the oldest events drop."
        },
    )
    stream_keep_s: float = field(
        default=DEFAULT_STREAM_KEEP_S,
        metadata={"help": "Seconds a rejoinable run's events can be replayed after it ended."},
    )
    run_timeout_s: float | None = field(
        default=None,
        metadata={
            "help": "Cancel a run that has gone on this long (reason 'deadline exceeded after "
            "N s'); a request's X-ADK-Run-Timeout header sets its own. Default: no limit."
        },
    )
    max_run_timeout_s: float | None = field(
        default=None,
        metadata={
            "help": "Cap on the X-ADK-Run-Timeout header (a larger value gets this one, and "
            "a request without one gets at most this). Default: no cap."
        },
    )
    idle_timeout_s: float | None = field(
        default=None,
        metadata={
            "help": "Cancel a run that sent no event for this long (reason 'no event for N "
            "s'); a request's X-ADK-Idle-Timeout header sets its own. Default: no limit."
        },
    )
    max_idle_timeout_s: float | None = field(
        default=None,
        metadata={"help": "Cap on the X-ADK-Idle-Timeout header. Default: no cap."},
    )
    run_records_per_session: int = field(
        default=DEFAULT_RECORDS_PER_SESSION,
        metadata={
            "help": "How many ended runs of a session /runs?status=all keeps (0: no records)."
        },
    )
    run_records_ttl_s: float = field(
        default=DEFAULT_RECORDS_TTL_S,
        metadata={"help": "How long a run's record is kept after it ended, in seconds."},
    )
    gc_freeze: bool = field(
        default=False,
        metadata={
            "help": "Once started, freeze the objects loaded so far out of the garbage "
            "collector (gc.freeze): full collections then stop pausing the server for 100+ ms, "
            "so deadlines and cancels fire on time."
        },
    )
    metrics: bool = field(
        default=False,
        metadata={
            "help": "Serve the OpenTelemetry metrics at /metrics for Prometheus (needs "
            "pip install 'adk-cancel[prometheus]')."
        },
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
        _seconds("stream_keep_s", self.stream_keep_s)
        if self.on_disconnect not in ("cancel", "continue"):
            raise ValueError(
                f"on_disconnect must be 'cancel' or 'continue', got {self.on_disconnect!r}"
            )
        for name in ("stream_max_events", "stream_max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        _seconds("run_records_ttl_s", self.run_records_ttl_s)
        for name in ("run_timeout_s", "max_run_timeout_s", "idle_timeout_s", "max_idle_timeout_s"):
            _limit(name, getattr(self, name))
        for limit, cap in (
            ("run_timeout_s", "max_run_timeout_s"),
            ("idle_timeout_s", "max_idle_timeout_s"),
        ):
            value, most = getattr(self, limit), getattr(self, cap)
            if value is not None and most is not None and value > most:
                raise ValueError(
                    f"{limit} ({value:g} s) is above {cap} ({most:g} s): lower it or raise the cap"
                )
        if (
            not isinstance(self.run_records_per_session, int)
            or isinstance(self.run_records_per_session, bool)
            or self.run_records_per_session < 0
        ):
            raise ValueError(
                "run_records_per_session must be a whole number >= 0, got "
                f"{self.run_records_per_session!r}"
            )
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
        if self.metrics and (missing := _missing_prometheus()) is not None:
            # Refused with the options, so that the CLI says it in one usage line, not in a
            # traceback when the app is built.
            raise ValueError(
                f"metrics=True (--metrics) needs the Prometheus exporter ({missing} is not "
                "installed): pip install 'adk-cancel[prometheus]'"
            )

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[CancelOptions, dict[str, Any]]:
        """Our options out of a mix of ours and ADK's keyword arguments."""
        names = cls.names()
        ours = {k: v for k, v in kwargs.items() if k in names}
        return cls(**ours), {k: v for k, v in kwargs.items() if k not in names}


def _missing_prometheus() -> str | None:
    """The first module ``/metrics`` needs that is not installed, or None."""
    for module in ("prometheus_client", "opentelemetry.exporter.prometheus", "opentelemetry.sdk"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            return module
    return None
