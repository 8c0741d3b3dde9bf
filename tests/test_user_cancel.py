"""Cancelling every run of a user (``POST /apps/{app}/users/{user}:cancel``), and narrow
cancels that say what they left running (``remaining_active``), on one worker; the CLI's
``cancel_user`` and its warning. Across workers: ``tests/backends/test_operations.py``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from support import build_app, run_body, serve, session_path, wait_until

from adk_cancel.cli import main

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(build_app(cancel_grace_s=0.3)) as c:
        yield c


def new_session(client: TestClient, app: str = "slow_agent", user: str = "u") -> str:
    return str(client.post(f"/apps/{app}/users/{user}/sessions", json={}).json()["id"])


def active(client: TestClient, sid: str, app: str = "slow_agent", user: str = "u") -> list[Any]:
    return list(client.get(session_path(sid, app, user) + "/runs").json()["runs"])


def start(
    client: TestClient, route: str, sid: str, app: str = "slow_agent", user: str = "u"
) -> threading.Thread:
    """A run that waits in its 30 s tool, and once it is listed."""
    body = run_body(sid, "tool 30", app=app, user=user, streaming=route == "run_sse")
    before = len(active(client, sid, app, user))
    thread = threading.Thread(target=lambda: client.post(f"/{route}", json=body), daemon=True)
    thread.start()
    wait_until(lambda: len(active(client, sid, app, user)) > before)
    wait_until(lambda: all(r["invocation_id"] for r in active(client, sid, app, user)))
    return thread


def test_user_cancel_ends_every_run_of_that_user_and_nothing_else(client: TestClient) -> None:
    s1, s2 = new_session(client), new_session(client)
    threads = [start(client, "run", s1), start(client, "run_sse", s2)]
    other_user = new_session(client, user="mallory")
    threads.append(start(client, "run", other_user, user="mallory"))
    other_app = new_session(client, app="sync_agent")
    threads.append(start(client, "run", other_app, app="sync_agent"))

    answer = client.post("/apps/slow_agent/users/u:cancel", json={"reason": "logged out"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "cancelled" and body["reason"] == "logged out"
    assert (body["app_name"], body["user_id"]) == ("slow_agent", "u")
    assert body["sessions"] == sorted([s1, s2])
    assert sorted((r["session_id"], r["route"], r["stopped_by"]) for r in body["runs"]) == sorted(
        [(s1, "run", "abort"), (s2, "run_sse", "abort")]
    )
    assert body["remaining_active"] == [] and body["warning"] is None
    assert active(client, s1) == [] == active(client, s2)
    # Another user's run and the same user's run in another app go on.
    assert len(active(client, other_user, user="mallory")) == 1
    assert len(active(client, other_app, app="sync_agent")) == 1

    again = client.post("/apps/slow_agent/users/u:cancel")
    assert again.status_code == 404
    assert again.json() == {"detail": "No active run for user 'u' in app 'slow_agent'."}
    assert client.post("/apps/slow_agent/users/nobody:cancel").status_code == 404
    for path in ("/apps/slow_agent/users/mallory:cancel", "/apps/sync_agent/users/u:cancel"):
        assert client.post(path).status_code == 200
    for thread in threads:
        thread.join(5)
    # The records say who cancelled each run.
    [record] = client.get(session_path(s1) + "/runs", params={"status": "all"}).json()["runs"]
    assert (record["cancelled_by"], record["cancel_reason"]) == ("request", "logged out")


def test_a_narrow_session_cancel_lists_what_it_left_running(client: TestClient) -> None:
    sid = new_session(client)
    threads = [start(client, "run", sid), start(client, "run_sse", sid)]
    first, second = sorted(active(client, sid), key=lambda r: r["started_at"])
    answer = client.post(
        session_path(sid) + ":cancel", json={"invocation_id": first["invocation_id"]}
    ).json()
    assert [r["run_id"] for r in answer["runs"]] == [first["run_id"]]
    assert answer["remaining_active"] == [
        {
            "run_id": second["run_id"],
            "invocation_id": second["invocation_id"],
            "route": "run_sse",
            "session_id": sid,
            "worker": second["worker"],
        }
    ]
    assert answer["warning"] == (
        "1 other run of this session is still active (listed in remaining_active): cancel "
        "without invocation_id or run_id to stop every one."
    )
    # A cancel of the whole session leaves nothing, and says nothing.
    final = client.post(session_path(sid) + ":cancel").json()
    assert final["remaining_active"] == [] and final["warning"] is None
    for thread in threads:
        thread.join(5)


def test_a_narrow_user_cancel_lists_the_users_other_runs(client: TestClient) -> None:
    s1, s2 = new_session(client), new_session(client)
    threads = [start(client, "run", s1), start(client, "run", s2)]
    [target] = active(client, s1)
    answer = client.post(
        "/apps/slow_agent/users/u:cancel", json={"invocation_id": target["invocation_id"]}
    ).json()
    assert answer["sessions"] == [s1]
    assert [(r["session_id"], r["route"]) for r in answer["remaining_active"]] == [(s2, "run")]
    assert answer["warning"].startswith("1 other run of this user is still active")
    client.post("/apps/slow_agent/users/u:cancel")
    for thread in threads:
        thread.join(5)


def test_user_cancel_body_errors_and_openapi(client: TestClient) -> None:
    for body in (b"{not json", b'{"wait": "maybe"}', b'{"unknown": 1}', b'{"timeout_s": NaN}'):
        answer = client.post(
            "/apps/slow_agent/users/u:cancel",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
    paths = client.get("/openapi.json").json()["paths"]
    route = paths["/apps/{app_name}/users/{user_id}:cancel"]["post"]
    assert {"200", "202", "404", "422", "503"} <= set(route["responses"])
    runs = paths["/apps/{app_name}/users/{user_id}/sessions/{session_id}/runs"]["get"]
    assert "422" in runs["responses"]
    assert [p["name"] for p in runs["parameters"]][-1] == "status"


def test_wait_false_answers_202(client: TestClient) -> None:
    sid = new_session(client)
    thread = start(client, "run", sid)
    answer = client.post("/apps/slow_agent/users/u:cancel", json={"wait": False})
    assert answer.status_code == 202 and answer.json()["status"] == "cancelling"
    thread.join(5)
    wait_until(lambda: active(client, sid) == [])


def test_cli_cancel_user_and_the_narrow_cancel_warning() -> None:
    with serve(build_app()) as url:

        def session() -> str:
            return str(httpx.post(f"{url}/apps/slow_agent/users/u/sessions", json={}).json()["id"])

        def run(sid: str) -> threading.Thread:
            thread = threading.Thread(
                target=lambda: httpx.post(f"{url}/run", json=run_body(sid, "tool 30"), timeout=30),
                daemon=True,
            )
            thread.start()
            return thread

        def listed(sid: str) -> list[Any]:
            return list(httpx.get(url + session_path(sid) + "/runs").json()["runs"])

        sid = session()
        threads = [run(sid), run(sid)]
        wait_until(lambda: len(listed(sid)) == 2 and all(r["invocation_id"] for r in listed(sid)))
        invocation = listed(sid)[0]["invocation_id"]
        narrow = CliRunner().invoke(
            main,
            [
                "cancel", "--url", url, "--app", "slow_agent", "--user", "u",
                "--session", sid, "--invocation", invocation,
            ],
        )  # fmt: skip
        assert narrow.exit_code == 0, narrow.output
        assert "warning: 1 other run of this session is still active" in narrow.stderr
        assert len(json.loads(narrow.stdout)["remaining_active"]) == 1

        user = ["cancel_user", "--url", url, "--app", "slow_agent", "--user", "u"]
        result = CliRunner().invoke(main, [*user, "--reason", "logged out"])
        assert result.exit_code == 0, result.output
        answer = json.loads(result.stdout)
        assert answer["sessions"] == [sid] and answer["reason"] == "logged out"
        assert "warning" not in result.stderr
        nothing = CliRunner().invoke(main, user)
        assert nothing.exit_code == 1
        assert "No active run for user 'u'" in nothing.stdout
        statuses = CliRunner().invoke(
            main,
            ["runs", "--url", url, "--app", "slow_agent", "--user", "u", "--session", sid,
             "--status", "cancelled"],
        )  # fmt: skip
        assert statuses.exit_code == 0
        assert [r["status"] for r in json.loads(statuses.stdout)["runs"]] == ["cancelled"] * 2
        for thread in threads:
            thread.join(5)
