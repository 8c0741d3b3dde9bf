"""Each ADK hook of the seam (``adk_cancel.adk``), removed: installing says which guarantee
is lost, naming the google-adk version, and what still works keeps working."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from support import build_app, until
from turns import assert_well_formed, cancel, new_session, serve_app, start, stored

import adk_cancel
from adk_cancel.adk import version
from adk_cancel.adk.checks import check_adk
from adk_cancel.adk.version import adk_version, outside_tested_range

served = contextlib.contextmanager(serve_app)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "adk_cancel" and r.levelno >= logging.WARNING
    ]


@pytest.fixture
def warned(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="adk_cancel")
    yield caplog


def test_an_adk_with_every_hook_installs_without_a_warning(warned: Any) -> None:
    build_app()
    assert _warnings(warned) == []


def test_no_abort_is_a_warning_and_cancels_still_stop_by_force(
    warned: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from google.adk.agents.invocation_context import InvocationContext

    monkeypatch.delattr(InvocationContext, "abort")
    assert "abort" in [f.hook for f in check_adk(build_app(), True)]
    warned.clear()
    build_app()
    [line] = _warnings(warned)
    assert f"google-adk {adk_version()}" in line and "no abort()" in line
    assert "forces after cancel_grace_s" in line


async def test_without_abort_a_cancel_forces_and_the_session_is_repaired(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    from google.adk.agents.invocation_context import InvocationContext

    monkeypatch.delattr(InvocationContext, "abort")
    with served(tmp_path, "sqlite", cancel_grace_s=0.2) as server:
        sid = await new_session(http, server.url)
        turn = await start(http, server.url, "run", sid, "tool 30")
        await until(partial(_waiting_in_tool, server, sid, http), what="the run waits in its tool")
        [run] = (await cancel(http, server.url, sid, reason="stop"))["runs"]
        # Sealed by ADK's own clean-up of a cancelled task (2.15) or by adk-cancel's repair
        # (2.13: ``repaired``): either way no call is left open (read back below).
        assert run["stopped_by"] == "force", run
        await turn.finished()
        assert turn.headers.get("x-adk-cancel") == "cancelled"
        assert_well_formed(await stored(server, sid, http))


async def _waiting_in_tool(server: Any, sid: str, http: httpx.AsyncClient) -> bool:
    events = await stored(server, sid, http)
    return any(e.get_function_calls() for e in events)


def test_no_rewind_is_a_warning(warned: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.adk.runners import Runner

    monkeypatch.delattr(Runner, "rewind_async")
    assert "rewind" in [f.hook for f in check_adk(FastAPI(), True)]
    build_app()
    [line] = _warnings(warned)
    assert "no rewind_async()" in line and "rolled_back false" in line


async def test_without_rewind_a_rollback_says_why_and_leaves_the_session_sealed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    from google.adk.runners import Runner

    monkeypatch.delattr(Runner, "rewind_async")
    with served(tmp_path, "memory") as server:
        sid = await new_session(http, server.url)
        await start(http, server.url, "run_sse", sid, "tool 30")
        await until(partial(_waiting_in_tool, server, sid, http), what="the run waits in its tool")
        [run] = (await cancel(http, server.url, sid, action="rollback"))["runs"]
        assert run["stopped"] and run["rolled_back"] is False, run
        assert f"google-adk {adk_version()} has no Runner.rewind_async" in run["rollback_error"]
        assert_well_formed(await stored(server, sid, http))


def test_a_plugin_callback_adk_no_longer_calls_is_a_warning(
    warned: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.adk.plugins.base_plugin import BasePlugin

    monkeypatch.delattr(BasePlugin, "before_run_callback")
    build_app()
    [line] = _warnings(warned)
    assert "BasePlugin has no before_run_callback" in line and "can only force" in line


def test_an_app_without_adks_web_server_is_a_warning(warned: Any) -> None:
    adk_cancel.install(FastAPI())
    [line] = _warnings(warned)
    assert "web server was not found" in line and "by force" in line
    assert "adk_cancel.get_fast_api_app" in line


def test_an_adk_app_without_run_live_is_a_warning(warned: Any) -> None:
    from google.adk.cli.fast_api import get_fast_api_app
    from support import TEST_AGENTS, memory_services

    app = get_fast_api_app(agents_dir=str(TEST_AGENTS), **memory_services())
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") != "/run_live"]
    adk_cancel.install(app)
    [line] = _warnings(warned)
    assert "no /run_live websocket route" in line


@pytest.mark.parametrize(
    ("installed", "warns"),
    [("2.12.3", "older than"), ("2.16.0", "newer than"), ("3.0.0rc1", "newer than")],
)
def test_a_google_adk_outside_the_tested_range_is_a_warning(
    warned: Any, monkeypatch: pytest.MonkeyPatch, installed: str, warns: str
) -> None:
    monkeypatch.setattr(version, "adk_version", lambda: installed)
    build_app()
    [line] = _warnings(warned)
    assert f"google-adk {installed} is {warns}" in line and "pip install" in line


def test_the_tested_range_is_the_one_pyproject_declares() -> None:
    import tomllib

    from support import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [adk] = [d for d in project["dependencies"] if d.startswith("google-adk")]
    assert adk == f"google-adk>={version.OLDEST_TESTED},<{version.BELOW}"
    assert outside_tested_range(version.OLDEST_TESTED) is None
    assert outside_tested_range(version.NEWEST_TESTED) is None
    assert outside_tested_range(adk_version()) is None


@pytest.mark.parametrize("name", ["api_server", "web"])
def test_an_adk_without_its_command_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from click.testing import CliRunner
    from google.adk.cli import cli_tools_click

    from adk_cancel.cli import main

    monkeypatch.delattr(cli_tools_click, {"api_server": "cli_api_server", "web": "cli_web"}[name])
    # The group keeps a command once loaded (by an earlier test): load it afresh here.
    monkeypatch.setattr(main, "commands", {k: v for k, v in main.commands.items() if k != name})
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 1, result.output
    assert f"Error: google-adk {adk_version()} has no {name} command for adk-cancel" in (
        result.output
    )
    assert "pip install 'google-adk>=2.13.0,<2.16'" in result.output
    assert "Traceback" not in result.output


def test_capabilities_set_only_the_fields_this_adk_knows() -> None:
    from pydantic import BaseModel

    from adk_cancel.adk.models import with_capabilities

    class Older(BaseModel):  # an ADK whose LlmCapabilities has another field only
        streaming: bool = True

    changed = with_capabilities(Older(), output_schema_and_tools=False, streaming=False)  # type: ignore[arg-type]
    assert changed == Older(streaming=False)


def test_a_live_handler_adk_cancel_cannot_read_is_a_warning(warned: Any) -> None:
    """ADK's ``/run_live`` handler renamed, or without its list of tasks: live cancels still
    work, but a task of ADK's that fails by itself could go unread: said at install."""
    from google.adk.cli.fast_api import get_fast_api_app
    from support import TEST_AGENTS, memory_services

    app = get_fast_api_app(agents_dir=str(TEST_AGENTS), **memory_services())
    [live] = [r for r in app.router.routes if getattr(r, "path", "") == "/run_live"]
    assert live.endpoint.__name__ == "run_agent_live"  # what adk_cancel.adk.live reads

    async def another_handler(websocket: Any) -> None:
        return None

    live.endpoint = another_handler
    adk_cancel.install(app)
    [line] = _warnings(warned)
    assert "/run_live handler is not the one adk-cancel reads" in line
    assert "closes 4000" in line and "never retrieved" in line
