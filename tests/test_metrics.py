"""OpenTelemetry metrics and traces of runs: the instrument values after a scripted sequence
of runs (read with the SDK's in-memory reader), the cancel's span event on ADK's invocation
span, and the Prometheus route (``--metrics``) of a real server process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import TEST_AGENTS, build_app, memory_services, run_body, session_path, wait_until

from adk_cancel.testing import ServerProcess

pytestmark = pytest.mark.timeout(120)

Point = tuple[str, frozenset[tuple[str, Any]]]


@pytest.fixture(scope="module")
def reader() -> InMemoryMetricReader:
    """The process's meter provider, with an in-memory reader (a provider can be set once per
    process: the tests read differences, not totals)."""
    current = metrics.get_meter_provider()
    if isinstance(current, MeterProvider):
        pytest.skip("another meter provider is already set in this test process")
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


def snapshot(reader: InMemoryMetricReader) -> dict[Point, Any]:
    """adk_cancel's data points: sums and gauges by value, histograms as (count, sum)."""
    data = reader.get_metrics_data()
    points: dict[Point, Any] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            if scope.scope.name != "adk_cancel":
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, frozenset(dict(point.attributes or {}).items()))
                    if isinstance(point, HistogramDataPoint):
                        points[key] = (point.count, point.sum)
                    else:
                        points[key] = point.value
    return points


def delta(before: dict[Point, Any], after: dict[Point, Any], name: str, **attrs: Any) -> Any:
    key = (name, frozenset(attrs.items()))
    now, then = after.get(key, 0), before.get(key, 0)
    if isinstance(now, tuple):
        then = then or (0, 0.0)
        return (now[0] - then[0], now[1] - then[1])
    return now - then


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    build_app()  # ADK's app factory sets up its tracer provider
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        pytest.skip("ADK did not set up a tracer provider")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def client(reader: InMemoryMetricReader) -> Iterator[TestClient]:
    with TestClient(build_app(), raise_server_exceptions=False) as c:
        yield c


def new_session(client: TestClient, app: str = "slow_agent") -> str:
    return str(client.post(f"/apps/{app}/users/u/sessions", json={}).json()["id"])


def test_instruments_after_a_scripted_sequence_of_runs(
    client: TestClient, reader: InMemoryMetricReader
) -> None:
    sid = new_session(client)
    client.post("/run", json=run_body(sid, "quick"))  # loads the agent before counting
    before = snapshot(reader)

    # 1. finished; 2. cancelled by a :cancel (abort); 3. timed out; 4. failed (run_sse).
    client.post("/run", json=run_body(sid, "quick"))
    body = run_body(sid, "tool 30")
    thread = threading.Thread(target=lambda: client.post("/run", json=body), daemon=True)
    thread.start()
    wait_until(lambda: client.get(session_path(sid) + "/runs").json()["runs"])
    during = snapshot(reader)
    assert delta(before, during, "adk_cancel.runs.active", app="slow_agent", route="run",
                 status="running") == 1  # fmt: skip
    client.post(session_path(sid) + ":cancel")
    thread.join(5)
    client.post("/run", json=run_body(sid, "tool 30"), headers={"X-ADK-Run-Timeout": "0.2"})
    failing = new_session(client, "failing_agent")
    client.post("/run_sse", json=run_body(failing, "hi", app="failing_agent", streaming=True))
    after = snapshot(reader)

    run = {"app": "slow_agent", "route": "run"}
    assert delta(before, after, "adk_cancel.runs.started", **run) == 3
    assert (
        delta(before, after, "adk_cancel.runs.started", app="failing_agent", route="run_sse") == 1
    )
    assert delta(before, after, "adk_cancel.runs.cancelled", **run, stopped_by="abort",
                 cause="request") == 1  # fmt: skip
    assert delta(before, after, "adk_cancel.runs.timed_out", **run, stopped_by="abort",
                 limit="run") == 1  # fmt: skip
    for status in ("finished", "cancelled", "timed_out"):
        assert delta(before, after, "adk_cancel.runs.ended", **run, status=status) == 1
    assert delta(before, after, "adk_cancel.runs.ended", app="failing_agent", route="run_sse",
                 status="failed") == 1  # fmt: skip
    count, total_ms = delta(before, after, "adk_cancel.run.stop_duration", **run,
                            stopped_by="abort")  # fmt: skip
    assert count == 2 and 0 < total_ms < 2000
    # Nothing is active any more: the gauge says 0, not nothing.
    assert after[("adk_cancel.runs.active", frozenset({**run, "status": "running"}.items()))] == 0


def test_a_cancel_is_an_event_on_adks_invocation_span(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    sid = new_session(client)
    body = run_body(sid, "tool 30")
    thread = threading.Thread(target=lambda: client.post("/run", json=body), daemon=True)
    thread.start()
    wait_until(lambda: client.get(session_path(sid) + "/runs").json()["runs"])
    wait_until(lambda: "functionCall" in client.get(session_path(sid)).text)
    answer = client.post(session_path(sid) + ":cancel", json={"reason": "enough"}).json()
    thread.join(5)
    [run] = answer["runs"]

    def cancelled_spans() -> list[Any]:
        return [
            s
            for s in spans.get_finished_spans()
            if any(e.name == "adk_cancel.cancel" for e in s.events)
            and dict(s.events[-1].attributes or {}).get("adk_cancel.run_id") == run["run_id"]
        ]

    [invocation] = wait_until(cancelled_spans)
    [event] = [e for e in invocation.events if e.name == "adk_cancel.cancel"]
    assert dict(event.attributes or {}) == {
        "adk_cancel.reason": "enough",
        "adk_cancel.cause": "request",
        "adk_cancel.action": "interrupt",
        "adk_cancel.run_id": run["run_id"],
    }
    [stop] = [
        s
        for s in spans.get_finished_spans()
        if s.name == "adk_cancel.stop" and s.attributes["adk_cancel.run_id"] == run["run_id"]
    ]
    assert stop.parent is not None and stop.parent.span_id == invocation.context.span_id
    assert stop.attributes["adk_cancel.stopped_by"] == "abort"
    assert stop.attributes["adk_cancel.stop_ms"] == run["stop_ms"]
    assert stop.start_time is not None and stop.end_time is not None
    assert stop.start_time >= invocation.start_time


def test_prometheus_route_of_a_server_process(tmp_path: Path) -> None:
    args = [f"--{k}={v}" for k, v in memory_services().items() if k != "web"]
    with ServerProcess(TEST_AGENTS, *args, "--metrics", log_path=tmp_path / "s.log") as server:
        url = server.url
        sid = httpx.post(f"{url}/apps/slow_agent/users/u/sessions", json={}).json()["id"]
        httpx.post(
            f"{url}/run",
            json=run_body(sid, "tool 30"),
            headers={"X-ADK-Run-Timeout": "0.2"},
            timeout=10,
        )
        text = httpx.get(f"{url}/metrics").text
    assert sample(text, "adk_cancel_runs_started_total", app="slow_agent", route="run") == 1
    timed_out = {"app": "slow_agent", "route": "run", "stopped_by": "abort", "limit": "run"}
    assert sample(text, "adk_cancel_runs_timed_out_total", **timed_out) == 1
    stops = {"app": "slow_agent", "route": "run", "stopped_by": "abort"}
    assert sample(text, "adk_cancel_run_stop_duration_milliseconds_count", **stops) == 1


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of Prometheus's text format, found by name and labels (the
    exporter adds labels of its own, such as otel_scope_name)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        label_text, value = line[len(name) + 1 :].rsplit("} ", 1)
        found = dict(part.split("=", 1) for part in label_text.split(","))
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")
