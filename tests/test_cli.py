"""The drop-in CLI: `adk-cancel api_server` serves ADK with :cancel; `cancel` calls it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from support import SAMPLES, free_port, run_body, session_path, wait_until

from adk_cancel.cli import main

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
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "SLOW_AGENT_EVENTS": str(events), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adk_cancel.cli",
            "api_server",
            "--port",
            str(port),
            "--session_service_uri",
            "memory://",
            "--artifact_service_uri",
            "memory://",
            "--no_chat",
            "--no-reload",
            str(SAMPLES),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: _up(url), timeout=90, interval=0.2)
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
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    # uvicorn re-raises SIGINT after a clean shutdown, which click reports as "Aborted!".
    log = server.stderr.read().decode() if server.stderr else ""
    assert "Application shutdown complete" in log and "Traceback" not in log, log


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/list-apps", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
