"""The drop-in CLI: `adk-cancel api_server` serves ADK with :cancel; `cancel` calls it."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from observations import EVENTS_ENV
from support import TEST_AGENTS, free_port, run_body, session_path, wait_until

from adk_cancel.cli import main
from adk_cancel.testing import ServerProcess

pytestmark = pytest.mark.timeout(180)


def test_api_server_keeps_every_adk_flag_and_adds_ours() -> None:
    from google.adk.cli.cli_tools_click import cli_api_server

    result = CliRunner().invoke(main, ["api_server", "--help"])
    assert result.exit_code == 0
    for param in cli_api_server.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert opt in result.output
    for ours in ("--cancel_backend", "--cancel_grace_s", "--chat / --no_chat"):
        assert ours in result.output


def test_cancel_command_reports_404_with_exit_1_and_unreachable_with_2() -> None:
    args = ["--app", "a", "--user", "u", "--session", "s"]
    gone = CliRunner().invoke(main, ["cancel", "--url", f"http://127.0.0.1:{free_port()}", *args])
    assert gone.exit_code == 2 and "Is the server running?" in gone.output


def test_api_server_subprocess_run_then_cancel_from_cli(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    server = ServerProcess(
        TEST_AGENTS,
        "--session_service_uri", "memory://",
        "--artifact_service_uri", "memory://",
        "--no_chat",
        log_path=tmp_path / "server.log",
        env={EVENTS_ENV: str(events)},
    )  # fmt: skip
    url = server.url
    server.start()
    try:
        sid = httpx.post(f"{url}/apps/slow_agent/users/u/sessions", json={}).json()["id"]
        thread = threading.Thread(
            target=lambda: httpx.post(f"{url}/run", json=run_body(sid, "tool 30"), timeout=30),
            daemon=True,
        )
        thread.start()
        wait_until(lambda: events.exists() and "tool_started" in events.read_text(), 10)
        listed = CliRunner().invoke(
            main, ["runs", "--url", url, "--app", "slow_agent", "--user", "u", "--session", sid]
        )
        assert listed.exit_code == 0 and json.loads(listed.output)["runs"][0]["route"] == "run"
        result = CliRunner().invoke(
            main,
            [
                "cancel",
                "--url",
                url,
                "--app",
                "slow_agent",
                "--user",
                "u",
                "--session",
                sid,
                "--reason",
                "from the cli",
            ],
        )
        assert result.exit_code == 0, result.output
        answer = json.loads(result.output)
        assert answer["status"] == "cancelled" and answer["reason"] == "from the cli"
        assert answer["runs"][0]["stopped_by"] == "abort"
        thread.join(5)
        assert "tool_cancelled" in events.read_text()
        again = CliRunner().invoke(
            main, ["cancel", "--url", url, "--app", "slow_agent", "--user", "u", "--session", sid]
        )
        assert again.exit_code == 1
        assert httpx.get(url + session_path(sid) + "/runs").json()["runs"] == []
    finally:
        server.stop(signal.SIGINT)
    # uvicorn re-raises SIGINT after a clean shutdown, which click reports as "Aborted!".
    log = server.log()
    assert "Application shutdown complete" in log and "Traceback" not in log, log
