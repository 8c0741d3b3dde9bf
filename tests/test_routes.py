"""The :cancel and /runs routes: scoping, bad input, and ADK's route that would swallow them."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import observed_of, run_body, session_path, wait_until

pytestmark = pytest.mark.timeout(60)


def test_cancel_route_is_not_taken_as_session_creation(client: TestClient) -> None:
    response = client.post(session_path("nope") + ":cancel")
    assert response.status_code == 404
    assert response.json() == {
        "detail": "No active run for session 'nope' of user 'u' in app 'slow_agent'."
    }
    # ADK's deprecated POST .../sessions/{session_id} would have created 'nope:cancel'.
    assert client.get(session_path("nope:cancel")).status_code == 404
    assert client.get("/apps/slow_agent/users/u/sessions").json() == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"wait": "maybe"}',
        b'{"timeout_s": -1}',
        b'{"unknown": 1}',
        b'{"reason": "' + b"x" * 600 + b'"}',
        b"[1, 2]",
    ],
)
def test_bad_bodies_get_422(client: TestClient, body: bytes) -> None:
    response = client.post(
        session_path("s") + ":cancel", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_unknown_app_user_or_session_get_404(client: TestClient) -> None:
    for path in ("/apps/nope/users/u/sessions/s", "/apps/slow_agent/users/x/sessions/s"):
        response = client.post(path + ":cancel", json={})
        assert response.status_code == 404
        assert response.json()["detail"].startswith("No active run for session")
        listed = client.get(path + "/runs")
        assert listed.status_code == 200 and listed.json()["runs"] == []


def test_another_users_path_cannot_cancel_or_list_a_run(
    client: TestClient, observed: list[dict[str, Any]]
) -> None:
    sid = client.post("/apps/slow_agent/users/u/sessions", json={}).json()["id"]
    thread = threading.Thread(
        target=lambda: client.post("/run", json=run_body(sid, "tool 30")), daemon=True
    )
    thread.start()
    wait_until(lambda: observed_of(observed, sid, "tool_started"))
    intruder = session_path(sid, user="mallory")
    assert client.get(intruder + "/runs").json()["runs"] == []
    assert client.post(intruder + ":cancel").status_code == 404
    assert client.post(session_path(sid, app="other_app") + ":cancel").status_code == 404
    assert len(client.get(session_path(sid) + "/runs").json()["runs"]) == 1
    assert not observed_of(observed, sid, "tool_cancelled")

    assert client.post(session_path(sid) + ":cancel").status_code == 200
    thread.join(5)


def test_empty_body_and_empty_object_both_mean_defaults(
    client: TestClient, observed: list[dict[str, Any]]
) -> None:
    sid = client.post("/apps/slow_agent/users/u/sessions", json={}).json()["id"]
    for body in (None, {}):
        thread = threading.Thread(
            target=lambda: client.post("/run", json=run_body(sid, "tool 30")), daemon=True
        )
        thread.start()
        wait_until(lambda: client.get(session_path(sid) + "/runs").json()["runs"])
        response = client.post(session_path(sid) + ":cancel", json=body)
        assert response.status_code == 200
        assert response.json()["reason"] == "cancelled by request"
        thread.join(5)


def test_openapi_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    cancel = paths["/apps/{app_name}/users/{user_id}/sessions/{session_id}:cancel"]["post"]
    assert {"200", "202", "404", "422", "503"} <= set(cancel["responses"])
    assert "/apps/{app_name}/users/{user_id}/sessions/{session_id}/runs" in paths


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"timeout_s": NaN}', "timeout_s"),
        (b'{"timeout_s": Infinity}', "timeout_s"),
        (b'{"timeout_s": 1e400}', "timeout_s"),
        (b'{"reason": "\\ud800"}', "reason"),
        (b'{"invocation_id": "x\\udfff"}', "invocation_id"),
        (b'{"reason": "' + b"x" * 1_000_000 + b'"}', "reason"),
        (b"\xff\xfe{}", None),
        (b"[" * 5000 + b"]" * 5000, None),
    ],
)
def test_inputs_json_can_carry_but_answers_cannot_get_a_bounded_422(
    client: TestClient, body: bytes, field: str | None
) -> None:
    response = client.post(
        session_path("s") + ":cancel", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert len(response.content) < 1000, "the answer repeats a bounded part of the input"
    [error] = response.json()["detail"]
    assert error["msg"]
    if field is not None:
        assert error["loc"] == ["body", field]
    else:
        # Nested too deep: refused before anything parses it (and its limit said).
        kind = "json_too_deep" if body.startswith(b"[[") else "json_invalid"
        assert error["loc"][0] == "body" and error["type"] == kind


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "application/x-www-form-urlencoded"}, {"content-type": "text/plain"}],
)
def test_a_json_body_is_read_as_json_whatever_its_content_type(
    client: TestClient, headers: dict[str, str]
) -> None:
    """``curl -d '{...}'`` sends a form content-type, some clients none: the body is JSON."""
    path = session_path("s") + ":cancel"
    answer = client.post(path, content=b'{"reason": "stop", "wait": false}', headers=headers)
    assert answer.status_code == 404, answer.text  # read, valid, and no run to cancel
    bad = client.post(path, content=b'{"wait": "no"}', headers=headers)
    assert bad.status_code == 422 and "dictionary" not in bad.text, bad.text
    assert bad.json()["detail"][0]["loc"] == ["body", "wait"]


@pytest.mark.parametrize(
    ("body", "loc", "msg", "shown"),
    [
        (
            b'{"reason": "stop",}',
            ["body"],
            # The parser's own words vary with the Python version; where it broke does not.
            "The body is not valid JSON (",
            '\'{"reason": "stop",}\'',
        ),
        (
            b'{"wait": "yes"}',
            ["body", "wait"],
            "wait must be a JSON boolean: true or false",
            "'yes'",
        ),
        (b'{"wait": 1}', ["body", "wait"], "wait must be a JSON boolean: true or false", "1"),
        (b'{"timeout_s": "5"}', ["body", "timeout_s"], "timeout_s must be a JSON number", "'5'"),
        (b'{"reason": 5}', ["body", "reason"], "reason must be a JSON string", "5"),
        (b'{"reson": "x"}', ["body", "reson"], "reson is not a field of a cancel request", "'x'"),
        (b'"stop"', ["body"], "the body must be a JSON object, such as", "'stop'"),
    ],
)
def test_422s_say_what_was_wrong_in_plain_words(
    client: TestClient, body: bytes, loc: list[str], msg: str, shown: str
) -> None:
    answer = client.post(
        session_path("s") + ":cancel", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == loc and msg in error["msg"], error
    assert error["input"] == shown, error
    if error["type"] == "json_invalid":
        assert re.search(r" at character 1[78]\): send a JSON object such as", error["msg"])


def test_booleans_are_json_booleans(client: TestClient) -> None:
    for body in ({"wait": "true"}, {"wait": "false"}, {"wait": 0}):
        assert client.post(session_path("s") + ":cancel", json=body).status_code == 422, body
    for body in ({"wait": True}, {"wait": False}, {"timeout_s": 5}, {"timeout_s": 0.5}):
        assert client.post(session_path("s") + ":cancel", json=body).status_code == 404, body
