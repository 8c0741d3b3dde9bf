"""Metrics and traces of runs and cancels, through OpenTelemetry's API (as ADK's own).

Instruments (meter ``adk_cancel``), each with the attributes ``app`` and ``route``:

| name | kind | more attributes | counts |
|---|---|---|---|
| ``adk_cancel.runs.started`` | counter | | runs registered |
| ``adk_cancel.runs.cancelled`` | counter | ``stopped_by``, ``cause`` | runs that ended cancelled |
| ``adk_cancel.runs.timed_out`` | counter | ``stopped_by``, ``limit`` | runs a deadline ended |
| ``adk_cancel.runs.ended`` | counter | ``status`` | every run that ended, by status |
| ``adk_cancel.run.stop_duration`` | histogram, ms | ``stopped_by`` | cancel to run stopped |
| ``adk_cancel.runs.active`` | gauge | ``status`` | runs held now (queued, running, cancelling) |

Traces: when the run's ADK invocation span records (ADK's server sets up a tracer provider),
a cancel adds the event ``adk_cancel.cancel`` (reason, cause, action) to it, a forced stop
``adk_cancel.force``, and once the run has stopped a child span ``adk_cancel.stop`` covers
the time from the cancel to the stop (``stopped_by``, ``stop_ms``, ``repaired``).

Everything is recorded once per run, never per event. With no SDK configured the API's
instruments are no-ops and no span records: a few attribute look-ups per run.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from . import __version__
from ._models import ACTIVE_STATUSES
from ._records import status_of

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ._registry import RunEntry, RunRegistry

logger = logging.getLogger("adk_cancel")

METER_NAME = "adk_cancel"
STOP_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

_registries: weakref.WeakSet[RunRegistry] = weakref.WeakSet()
_seen_active: set[tuple[str, str, str]] = set()
"""(app, route, status) reported before: reported as 0 once none is left, so a dashboard
sees the gauge fall rather than a series that stops."""


def _observe_active(options: CallbackOptions) -> Iterable[Observation]:
    counts: Counter[tuple[str, str, str]] = Counter()
    for registry in list(_registries):
        for entry in registry.all_entries_here():
            counts[(entry.key.app_name, entry.route, entry.info().status)] += 1
    _seen_active.update(counts)
    return [
        Observation(counts.get(k, 0), {"app": k[0], "route": k[1], "status": k[2]})
        for k in sorted(_seen_active)
    ]


_meter = metrics.get_meter(METER_NAME, __version__)
_started = _meter.create_counter(
    "adk_cancel.runs.started", unit="{run}", description="Runs started, by app and route."
)
_cancelled = _meter.create_counter(
    "adk_cancel.runs.cancelled",
    unit="{run}",
    description="Runs that ended cancelled (a :cancel, a disconnect, a shutdown, a busy "
    "policy), by app, route, stopped_by and cause.",
)
_timed_out = _meter.create_counter(
    "adk_cancel.runs.timed_out",
    unit="{run}",
    description="Runs a run or idle deadline ended, by app, route, stopped_by and limit.",
)
_ended = _meter.create_counter(
    "adk_cancel.runs.ended", unit="{run}", description="Runs that ended, by app, route and status."
)
_stop_ms = _meter.create_histogram(
    "adk_cancel.run.stop_duration",
    unit="ms",
    description="From a cancel reaching a run to the run having stopped.",
    explicit_bucket_boundaries_advisory=STOP_BUCKETS_MS,
)
_active = _meter.create_observable_gauge(
    "adk_cancel.runs.active",
    callbacks=[_observe_active],
    unit="{run}",
    description=f"Runs held now, by app, route and status ({', '.join(ACTIVE_STATUSES)}).",
)
_tracer = trace.get_tracer(METER_NAME, __version__)


def watch_registry(registry: RunRegistry) -> None:
    """Count ``registry``'s runs in the active-runs gauge (for as long as it exists)."""
    _registries.add(registry)


def run_started(entry: RunEntry) -> None:
    _started.add(1, {"app": entry.key.app_name, "route": entry.route})


def invocation_span(entry: RunEntry) -> None:
    """Keep the current span (ADK's invocation span, when the plugin attaches the run) if it
    records: a non-recording span costs nothing later."""
    span = trace.get_current_span()
    if span.is_recording():
        entry.span = span


def cancel_requested(entry: RunEntry) -> None:
    span, order = entry.span, entry.cancel_order
    if span is None or order is None or not span.is_recording():
        return
    span.add_event(
        "adk_cancel.cancel",
        {
            "adk_cancel.reason": order.reason,
            "adk_cancel.cause": order.cause,
            "adk_cancel.action": order.action,
            "adk_cancel.run_id": entry.run_id,
        },
    )


def forced(entry: RunEntry, grace_s: float) -> None:
    span = entry.span
    if span is not None and span.is_recording():
        span.add_event("adk_cancel.force", {"adk_cancel.grace_s": grace_s})


def run_ended(entry: RunEntry) -> None:
    """The registry's run-end hook: count the run, and trace how a cancelled one stopped."""
    status = status_of(entry)
    base = {"app": entry.key.app_name, "route": entry.route}
    _ended.add(1, {**base, "status": status})
    order = entry.cancel_order
    if order is None or status not in ("cancelled", "timed_out"):
        return
    stopped_by = entry.stopped_by or entry.stop_kind()
    with_stop = {**base, "stopped_by": stopped_by}
    if status == "timed_out":
        limit = "idle" if order.reason.startswith("no event") else "run"
        _timed_out.add(1, {**with_stop, "limit": limit})
    else:
        _cancelled.add(1, {**with_stop, "cause": order.cause})
    if entry.stop_ms is not None:
        _stop_ms.record(entry.stop_ms, with_stop)
    _trace_stop(entry, stopped_by)


def _trace_stop(entry: RunEntry, stopped_by: str) -> None:
    span, order = entry.span, entry.cancel_order
    if span is None or order is None or entry.cancel_mono is None:
        return
    cancelled_ns = int((entry.started_at + entry.cancel_mono - entry.started_mono) * 1e9)
    attributes: dict[str, Any] = {
        "adk_cancel.reason": order.reason,
        "adk_cancel.cause": order.cause,
        "adk_cancel.stopped_by": stopped_by,
        "adk_cancel.repaired": entry.repaired,
        "adk_cancel.route": entry.route,
        "adk_cancel.run_id": entry.run_id,
    }
    if entry.stop_ms is not None:
        attributes["adk_cancel.stop_ms"] = entry.stop_ms
    stop = _tracer.start_span(
        "adk_cancel.stop",
        context=trace.set_span_in_context(span),
        attributes=attributes,
        start_time=cancelled_ns,
    )
    stop.end()


# -- Prometheus -------------------------------------------------------------------------------

METRICS_PATH = "/metrics"
_prometheus_ready = False


def add_metrics_route(app: FastAPI) -> None:
    """Serve the process's OpenTelemetry metrics at ``/metrics`` in Prometheus's format.

    Installs a ``MeterProvider`` with a ``PrometheusMetricReader`` unless one is already set
    (then ``/metrics`` shows what that provider exports to ``prometheus_client``, if anything).
    """
    global _prometheus_ready
    try:
        import prometheus_client
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
    except ImportError as exc:
        raise RuntimeError(
            f"metrics=True (--metrics) needs the Prometheus exporter ({exc}): "
            "pip install 'adk-cancel[prometheus]'"
        ) from exc
    from fastapi import Response

    if not _prometheus_ready:
        _prometheus_ready = True
        current = metrics.get_meter_provider()
        if isinstance(current, MeterProvider):
            logger.warning(
                "adk-cancel: a MeterProvider is already set; /metrics serves only what it "
                "exports to prometheus_client (add a PrometheusMetricReader to it)"
            )
        else:
            metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))

    async def prometheus_metrics() -> Response:
        return Response(
            prometheus_client.generate_latest(prometheus_client.REGISTRY),
            media_type=prometheus_client.CONTENT_TYPE_LATEST,
        )

    app.add_api_route(
        METRICS_PATH,
        prometheus_metrics,
        methods=["GET"],
        include_in_schema=False,
        name="adk_cancel_metrics",
    )
    # Ahead of ADK's routes and mounts (``adk web`` serves static files), like ours all.
    app.router.routes.insert(0, app.router.routes.pop())
