"""Property-based bad input against the routes adk-cancel serves or wraps: every answer is a
documented 2xx/4xx, never a 5xx that plain ADK would not give too, and no run is left
behind (hypothesis; schemathesis over the OpenAPI schema where it can drive the routes)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import TEST_AGENTS, build_app, memory_services, serve, session_path

from adk_cancel.testing import ServerProcess

pytestmark = pytest.mark.timeout(600)

APP = build_app()
REGISTRY = APP.state.adk_cancel


@pytest.fixture(scope="module", autouse=True)
def clients() -> Iterator[None]:
    """Both apps, started (their lifespans run) for the whole module."""
    global OURS, PLAIN
    from google.adk.cli.fast_api import get_fast_api_app

    plain_app = get_fast_api_app(agents_dir=str(TEST_AGENTS), **memory_services())
    with (
        TestClient(APP, raise_server_exceptions=False) as OURS,
        TestClient(plain_app, raise_server_exceptions=False) as PLAIN,
    ):
        yield


@pytest.fixture(scope="module")
def served_schema() -> Iterator[Any]:
    """The OpenAPI schema of the app served on a real uvicorn, limited to the routes
    adk-cancel serves or wraps."""
    with serve(APP) as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json").include(
            path_regex=r"(:cancel$|/runs$|^/run$|^/run_sse$)"
        )


OURS: TestClient
PLAIN: TestClient
JSON_HEADERS = {"content-type": "application/json"}
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
cancel_fields = st.fixed_dictionaries(
    {},
    optional={
        "invocation_id": json_values,
        "reason": json_values | st.text(),
        "wait": json_values,
        "timeout_s": json_values | st.floats(allow_nan=True, allow_infinity=True),
        "unknown": json_values,
    },
)
run_bodies = st.fixed_dictionaries(
    {},
    optional={
        "appName": st.sampled_from(["slow_agent", "nope", ""]) | json_values,
        "userId": st.text(max_size=20) | json_values,
        "sessionId": st.text(max_size=20) | json_values,
        "newMessage": json_values,
        "streaming": json_values,
        "stateDelta": json_values,
    },
)


def _raw(value: Any) -> bytes:
    # Python's json writes NaN, Infinity and lone surrogates, as a sloppy client would.
    return json.dumps(value).encode("utf-8", "surrogatepass")


def _assert_nothing_left() -> None:
    # A run leaves the registry just after its last byte went out: allow that moment.
    deadline = time.monotonic() + 2
    while REGISTRY.keys_here() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert REGISTRY.keys_here() == [], "a request left a run registered"


@SETTINGS
@given(body=cancel_fields.map(_raw) | st.binary(max_size=200))
def test_cancel_answers_any_body_with_a_documented_status(body: bytes) -> None:
    answer = OURS.post(session_path("s") + ":cancel", content=body, headers=JSON_HEADERS)
    # No run is active: a well-formed body is a 404, anything else a 422; never a 500.
    assert answer.status_code in (404, 422), answer.text
    assert answer.json()["detail"]
    _assert_nothing_left()


@SETTINGS
@given(path=st.tuples(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20)))
def test_runs_and_cancel_answer_any_path(path: tuple[str, str]) -> None:
    user, session = (quote(part.encode("utf-8", "surrogatepass"), safe="") for part in path)
    listed = OURS.get(f"/apps/slow_agent/users/{user}/sessions/{session}/runs")
    assert listed.status_code in (200, 404), listed.text
    cancelled = OURS.post(f"/apps/slow_agent/users/{user}/sessions/{session}:cancel")
    assert cancelled.status_code in (404, 405), cancelled.text
    _assert_nothing_left()


@SETTINGS
@given(
    route=st.sampled_from(["/run", "/run_sse"]),
    body=run_bodies.map(_raw) | json_values.map(_raw) | st.binary(max_size=200),
)
def test_run_routes_never_answer_worse_than_plain_adk(route: str, body: bytes) -> None:
    ours = OURS.post(route, content=body, headers=JSON_HEADERS)
    if ours.status_code >= 500:
        plain = PLAIN.post(route, content=body, headers=JSON_HEADERS)
        assert plain.status_code >= 500, f"{ours.status_code} {ours.text[:300]}"
    _assert_nothing_left()


def test_schema_driven_requests_never_get_a_server_error(served_schema: Any) -> None:
    operations = [result.ok() for result in served_schema.get_all_operations()]
    # A session's and a user's :cancel, /runs, /run(_sse)
    assert len(operations) == 5, [op.label for op in operations]
    for operation in operations:

        @settings(
            max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            answer = case.call(timeout=30)
            if answer.status_code >= 500:
                body = json.dumps(case.body).encode() if case.body is not None else None
                plain = PLAIN.request(
                    case.method, case.formatted_path, content=body, headers=JSON_HEADERS
                )
                assert plain.status_code >= 500, f"{answer.status_code} {answer.text[:300]}"
            _assert_nothing_left()

        check()


def test_every_runs_status_the_schema_allows_is_accepted(served_schema: Any) -> None:
    """The schema of ``?status=`` is what the route takes: no schema-valid request is a 422."""
    [operation] = [
        result.ok()
        for result in served_schema.get_all_operations()
        if result.ok().path.endswith("/runs")
    ]

    @settings(
        max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        answer = case.call(timeout=30)
        assert answer.status_code == 200, (case.query, answer.text[:300])

    check()


def test_a_body_nested_too_deep_is_a_422_on_a_real_server(tmp_path: Path) -> None:
    """A body nested thousands deep (a few kilobytes) is answered 422 by adk-cancel before
    anything parses it: ADK's FastAPI handlers (and, from Python 3.12, ``json.loads``) would
    recurse through it past the interpreter's limit. On Python 3.13 the 3,000-deep array
    (which ``json.loads`` parses there) reached FastAPI's 422 handler, whose encoder raised
    RecursionError: a 500 with a traceback. Not hypothesis: its bodies stay shallow."""
    deep_message = {"role": "user", "parts": [{"text": "hi"}], "x": "NEST"}
    run = json.dumps(
        {"appName": "slow_agent", "userId": "u", "sessionId": "s", "newMessage": deep_message}
    ).encode()
    cases = []
    for depth in (3_000, 10_000):
        array = b"[" * depth + b"]" * depth
        # An otherwise well-formed run body, one of its values nested (objects) too deep.
        deep_run = run.replace(b'"NEST"', b'{"a": ' * depth + b"1" + b"}" * depth)
        cases += [
            ("/run", array),
            ("/run_sse", array),
            ("/run", deep_run),
            ("/run_sse", deep_run),
            (session_path("s") + ":cancel", array),
            ("/apps/slow_agent/users/u:cancel", array),
        ]
    flags = ("--session_service_uri=memory://", "--artifact_service_uri=memory://", "--no_chat")
    with ServerProcess(TEST_AGENTS, *flags, log_path=tmp_path / "server.log") as server:
        for path, body in cases:
            answer = httpx.post(server.url + path, content=body, headers=JSON_HEADERS, timeout=30)
            assert answer.status_code == 422, (
                path,
                len(body),
                answer.status_code,
                answer.text[:300],
            )
            [error] = answer.json()["detail"]
            assert error["loc"] == ["body"], error
            assert re.search(r"nested too deep.*at most \d+ levels", error["msg"]), error
        # Still serving, and with no run left behind.
        assert httpx.get(server.url + session_path("s") + "/runs", timeout=10).json()["runs"] == []
        log = server.log()
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]
