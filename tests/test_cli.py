"""The drop-in CLI: `adk-cancel api_server` serves ADK with :cancel; `cancel` calls it."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
import httpx
import pytest
from click.testing import CliRunner, Result
from observations import EVENTS_ENV
from support import TEST_AGENTS, free_port, run_body, session_path, wait_until

from adk_cancel import CancelOptions
from adk_cancel.cli import cancel_option_params, main, pop_cancel_options
from adk_cancel.testing import ServerProcess

pytestmark = pytest.mark.timeout(180)

MEMORY = ("--session_service_uri", "memory://", "--artifact_service_uri", "memory://")


def command(name: str) -> click.Command:
    found = main.get_command(click.Context(main), name)
    assert found is not None
    return found


def one_line(text: str) -> str:
    """Help text with click's wrapping undone."""
    return " ".join(text.split())


# ---- flags ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["api_server", "web"])
def test_adk_commands_keep_every_adk_flag_and_add_ours(name: str) -> None:
    from google.adk.cli import cli_tools_click

    adk = {"api_server": cli_tools_click.cli_api_server, "web": cli_tools_click.cli_web}[name]
    ours = command(name)
    for param in adk.params:
        assert any(p.opts == param.opts for p in ours.params), param.opts
    names = [p.name for p in ours.params]
    assert [f.name for f in dataclasses.fields(CancelOptions)] == names[len(adk.params) :]
    help_text = one_line(CliRunner().invoke(main, [name, "--help"]).output)
    for opt in ("--cancel_backend", "--cancel_grace_s", "--cancel_node_id", "--shutdown_grace_s"):
        assert opt in help_text
    assert "--chat / --no_chat" in help_text


def test_cancel_flags_are_the_fields_of_cancel_options() -> None:
    params = {p.name: p for p in cancel_option_params()}
    assert list(params) == [f.name for f in dataclasses.fields(CancelOptions)]
    for f in dataclasses.fields(CancelOptions):
        param = params[f.name]
        assert isinstance(param, click.Option)
        assert param.opts == [f"--{f.name}"] and param.help == f.metadata["help"]
    # The CLI serves the chat page unless told not to; Python apps only when asked.
    assert params["chat"].default is True and CancelOptions().chat is False
    assert params["chat"].secondary_opts == ["--no_chat"]
    for seconds in ("cancel_grace_s", "shutdown_grace_s"):
        param_type = params[seconds].type
        assert isinstance(param_type, click.FloatRange) and param_type.min == 0
        assert params[seconds].default == getattr(CancelOptions(), seconds)
    assert params["cancel_node_id"].default is None
    assert params["cancel_backend"].default == "memory://"


@dataclass(frozen=True, kw_only=True)
class _FutureOptions:
    mode: Literal["drain", "cancel"] = field(default="drain", metadata={"help": "How."})
    level: Literal["a", "b"] | None = field(default=None, metadata={"help": "Which."})
    retries: int = field(default=3, metadata={"help": "How many."})
    ratio: float = field(default=0.5, metadata={"help": "How much."})
    label: str | None = field(default=None, metadata={"help": "A name."})
    loud: bool = field(default=False, metadata={"help": "Say more."})


def test_flag_types_follow_the_annotations() -> None:
    params = {p.name: p for p in cancel_option_params(_FutureOptions)}
    mode, level = params["mode"].type, params["level"].type
    assert isinstance(mode, click.Choice) and list(mode.choices) == ["drain", "cancel"]
    assert isinstance(level, click.Choice) and list(level.choices) == ["a", "b"]
    assert params["level"].default is None
    assert params["retries"].type is click.INT
    assert params["ratio"].type is click.FLOAT  # a float not named *_s is not seconds
    assert params["label"].type is click.STRING
    assert params["loud"].opts == ["--loud"] and params["loud"].secondary_opts == ["--no_loud"]

    @click.command(params=cancel_option_params(_FutureOptions))
    def probe(**values: Any) -> None:
        click.echo(json.dumps(values))

    result = CliRunner().invoke(probe, ["--mode", "cancel", "--no_loud", "--retries", "5"])
    assert json.loads(result.output)["mode"] == "cancel", result.output
    bad = CliRunner().invoke(probe, ["--mode", "later"])
    assert bad.exit_code == 2 and "'later' is not one of 'drain', 'cancel'" in bad.output


def test_an_option_without_a_flag_type_or_help_fails_loudly() -> None:
    @dataclass(frozen=True)
    class NoType:
        hosts: list[str] = field(default_factory=list, metadata={"help": "Where."})

    @dataclass(frozen=True)
    class NoHelp:
        quiet: bool = False

    with pytest.raises(TypeError, match=r"'hosts'.*no CLI flag type"):
        cancel_option_params(NoType)
    with pytest.raises(TypeError, match="'quiet' has no metadata"):
        cancel_option_params(NoHelp)


def test_pop_cancel_options_takes_ours_and_leaves_adks() -> None:
    values = {
        "cancel_backend": "memory://",
        "cancel_grace_s": 0.5,
        "cancel_node_id": "w1",
        "shutdown_grace_s": 0.0,
        "chat": True,
        "port": 8000,
    }
    options = pop_cancel_options(values)
    assert options == CancelOptions(
        cancel_grace_s=0.5, cancel_node_id="w1", shutdown_grace_s=0.0, chat=True
    )
    assert values == {"port": 8000}


# ---- bad values fail while the flags are parsed -----------------------------------------


@pytest.fixture
def adk_factory_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Calls of ADK's app factory (none may happen when the flags are wrong)."""
    from google.adk.cli import fast_api

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(fast_api, "get_fast_api_app", lambda **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize("url", ["bogus://x", "127.0.0.1:6379"])
def test_a_wrong_backend_url_is_a_usage_error(url: str, adk_factory_calls: list[Any]) -> None:
    result = CliRunner().invoke(main, ["api_server", "--cancel_backend", url, str(TEST_AGENTS)])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--cancel_backend': {url!r} is not a cancel backend URL" in (
        result.output
    )
    for scheme in ("use memory://", "redis://", "rediss://", "unix://"):
        assert scheme in result.output
    assert "Usage: " in result.output and "Traceback" not in result.output
    assert "backend=" not in result.output
    assert not isinstance(result.exception, ValueError)
    assert adk_factory_calls == []


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--cancel_grace_s", "-1", "-1.0 is not in the range x>=0"),
        ("--shutdown_grace_s", "nan", "'nan' is not a number of seconds"),
    ],
)
def test_wrong_seconds_are_usage_errors(
    flag: str, value: str, says: str, adk_factory_calls: list[Any]
) -> None:
    result = CliRunner().invoke(main, ["api_server", flag, value, str(TEST_AGENTS)])
    assert result.exit_code == 2 and f"Invalid value for '{flag}': {says}" in result.output
    assert adk_factory_calls == []


def _without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``adk-cancel *args`` in a child process in which ``module`` cannot be imported, as on
    an install without the extra that brings it."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from adk_cancel.cli import main\n"
        "main(prog_name='adk-cancel')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_a_redis_backend_without_the_redis_extra_says_how_to_install_it(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:secretpw@127.0.0.1:{port}/0"
    done = _without("redis", "api_server", "--cancel_backend", url, str(TEST_AGENTS))
    assert done.returncode == 2, done.stderr
    shown = f"redis://:***@127.0.0.1:{port}/0"
    assert f"Invalid value for '--cancel_backend': The cancel backend {shown!r} needs redis-py" in (
        done.stderr
    )
    assert "secretpw" not in done.stderr
    assert "pip install 'adk-cancel[redis]'" in done.stderr
    assert "Traceback" not in done.stderr and "backend=" not in done.stderr
    # Nothing started: ADK logs its services and uvicorn its process as they come up.
    assert "service" not in done.stderr and "Started server process" not in done.stderr
    assert done.stdout == ""


def test_metrics_without_the_prometheus_extra_is_a_one_line_usage_error() -> None:
    done = _without("prometheus_client", "api_server", "--metrics", str(TEST_AGENTS))
    assert done.returncode == 2, done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert "--metrics" in error and "prometheus_client is not installed" in error
    assert "pip install 'adk-cancel[prometheus]'" in error
    assert "Traceback" not in done.stderr and "Started server process" not in done.stderr


@pytest.mark.parametrize(
    ("query", "says"),
    [
        (
            "announce_ttl=5",
            "unknown option 'announce_ttl' in the cancel backend URL "
            "redis://:***@127.0.0.1:6391/0?announce_ttl=5 (did you mean announce_ttl_s?)",
        ),
        ("announce_ttl_s=abc", "announce_ttl_s='abc' is not a number: give seconds"),
        ("op_timeout_s=0", "op_timeout_s='0' must be greater than 0"),
        ("key_prefix=", "key_prefix must not be empty"),
    ],
)
def test_a_bad_option_in_the_backend_url_is_a_usage_error(
    query: str, says: str, adk_factory_calls: list[Any]
) -> None:
    url = f"redis://:secretpw@127.0.0.1:6391/0?{query}"
    result = CliRunner().invoke(main, ["api_server", "--cancel_backend", url, str(TEST_AGENTS)])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--cancel_backend'" in result.output and says in result.output
    assert "secretpw" not in result.output and "Traceback" not in result.output
    assert adk_factory_calls == []


def test_redis_pys_own_url_options_pass() -> None:
    from adk_cancel.backends import check_backend_url

    check_backend_url("redis://127.0.0.1/0?socket_timeout=3&health_check_interval=2")
    check_backend_url("rediss://127.0.0.1/0?ssl_cert_reqs=none&announce_ttl_s=4")


# ---- the command builds our app through ADK's, and undoes that -------------------------


@pytest.fixture
def served_apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The apps ADK's command would serve; uvicorn serves none of them."""
    import uvicorn
    from google.adk.cli import fast_api

    adk_factory = fast_api.get_fast_api_app
    apps: list[Any] = []

    def run(server: uvicorn.Server, *args: Any, **kwargs: Any) -> None:
        # While the command runs, ADK's factory is ours.
        assert fast_api.get_fast_api_app is not adk_factory
        apps.append(server.config.app)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    yield apps
    assert fast_api.get_fast_api_app is adk_factory


def test_flags_reach_the_app_and_adks_factory_is_its_own_again(served_apps: list[Any]) -> None:
    from google.adk.cli import fast_api

    adk_factory = fast_api.get_fast_api_app
    args = [
        "api_server", "--no-reload", *MEMORY,
        "--cancel_grace_s", "0.25", "--cancel_node_id", "cli-worker",
        "--shutdown_grace_s", "0", "--no_chat", str(TEST_AGENTS),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert fast_api.get_fast_api_app is adk_factory
    (app,) = served_apps
    assert app.state.adk_cancel.options == CancelOptions(
        cancel_grace_s=0.25,
        cancel_node_id="cli-worker",
        shutdown_grace_s=0.0,
        chat=False,
        gc_freeze=True,
    )
    assert "/chat" not in {getattr(r, "path", None) for r in app.router.routes}

    # Again, with the CLI's defaults: chat on, the heap loaded at startup frozen.
    again = CliRunner().invoke(main, ["api_server", "--no-reload", *MEMORY, str(TEST_AGENTS)])
    assert again.exit_code == 0, again.output
    assert fast_api.get_fast_api_app is adk_factory
    assert served_apps[1].state.adk_cancel.options == CancelOptions(chat=True, gc_freeze=True)


def test_adks_factory_is_restored_when_the_command_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from google.adk.cli import fast_api

    adk_factory = fast_api.get_fast_api_app

    def run(server: uvicorn.Server, *args: Any, **kwargs: Any) -> None:
        raise OSError("address already in use")

    monkeypatch.setattr(uvicorn.Server, "run", run)
    result = CliRunner().invoke(main, ["api_server", "--no-reload", *MEMORY, str(TEST_AGENTS)])
    assert isinstance(result.exception, OSError)
    assert fast_api.get_fast_api_app is adk_factory


# ---- help and output ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--help"], ["cancel", "--help"], ["runs", "--help"], ["runs", "--app", "a", "--user", "u"]],
)
def test_help_and_the_client_commands_do_not_import_adk(args: list[str]) -> None:
    code = (
        "import json, sys\n"
        "from adk_cancel.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:], prog_name='adk-cancel')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('google.adk'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], done.stdout + done.stderr


def test_every_public_name_of_the_package_still_resolves() -> None:
    # The package imports its public names on first use (so the CLI's help need not import
    # ADK): each name in __all__ must say where it lives.
    import adk_cancel

    for name in adk_cancel.__all__:
        assert getattr(adk_cancel, name) is not None, name
    assert set(adk_cancel.__all__) <= set(dir(adk_cancel))


def test_the_group_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = result.output.split("Commands:")[1]
    for name in ("api_server", "cancel", "models", "runs", "web"):
        assert re.search(rf"^  {name}\s+\S", listed, re.MULTILINE), listed


@pytest.mark.parametrize("name", ["api_server", "web"])
def test_help_shows_examples_of_this_command(name: str) -> None:
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0
    text = one_line(result.output)
    assert f"adk {name}" not in text
    assert f"adk-cancel {name} --session_service_uri=[uri] --port=[port]" in text
    # ADK's paragraphs keep their shape under our first line.
    assert "AGENTS_DIR: The directory of agents (where each subdirectory" in text


def test_models_list_says_prepared_or_how_to_prepare(tmp_path: Path) -> None:
    pytest.importorskip("mlx_lm", reason="preparing a model needs the mlx extra")
    runner = CliRunner()
    before = runner.invoke(main, ["models", "list", "--cache_dir", str(tmp_path)])
    assert before.exit_code == 0, before.output
    assert f"not prepared: adk-cancel models prepare tiny-random --cache_dir {tmp_path}\n" in (
        before.output
    )
    prepared = runner.invoke(
        main, ["models", "prepare", "tiny-random", "--cache_dir", str(tmp_path)]
    )
    assert prepared.exit_code == 0, prepared.output
    path = prepared.stdout.strip().splitlines()[-1]
    after = runner.invoke(main, ["models", "list", "--cache_dir", str(tmp_path)])
    assert "mlx/tiny-random\n" in after.output and f"  prepared: {path}\n" in after.output
    assert "mlx/smollm2-135m\n" in after.output
    for result in (before, prepared, after):
        assert result.output.endswith("\n")
    quiet = runner.invoke(
        main, ["models", "prepare", "tiny-random", "--cache_dir", str(tmp_path), "--quiet"]
    )
    assert quiet.exit_code == 0 and quiet.stdout == "", quiet.output


def test_a_scripted_run_logs_no_warning(our_url: str) -> None:
    """The slow sample agent's model reports its usage: ADK's "Skipping missing token usage
    metadata" warning buried the chat page's address on every run."""
    import httpx

    from adk_cancel.testing import run_body

    sid = httpx.post(f"{our_url}/apps/slow_agent/users/u/sessions", json={}).json()["id"]
    answer = httpx.post(f"{our_url}/run", json=run_body(sid, "quick", app="slow_agent"), timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()[-1]["usageMetadata"]["candidatesTokenCount"] == 5


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["api_server", "--help"],
        ["api_server", "--cancel_backend", "bogus://x"],
        ["cancel", "--app", "a", "--user", "u", "--session", "s", "--url", "UNREACHABLE"],
        ["runs", "--app", "a", "--user", "u", "--session", "s", "--url", "UNREACHABLE"],
        ["runs", "--app", "a", "--user", "u", "--session", "s", "--url", "ADK"],
        ["cancel", "--app", "a", "--user", "u"],
    ],
)
def test_every_answer_ends_with_a_newline(args: list[str], plain_adk_url: str) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    args = [{"UNREACHABLE": unreachable, "ADK": plain_adk_url}.get(a, a) for a in args]
    result: Result = CliRunner().invoke(main, args)
    assert result.output and result.output.endswith("\n"), repr(result.output[-200:])
    assert not result.output.endswith("\n\n"), repr(result.output[-200:])
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture(scope="module")
def plain_adk_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """ADK's own server: its answers to our client commands are not ours (a JSON 404)."""
    log = tmp_path_factory.mktemp("plain") / "server.log"
    with ServerProcess(TEST_AGENTS, *MEMORY, log_path=log, plain=True) as server:
        yield server.url


def test_cancel_command_reports_unreachable_with_2() -> None:
    args = ["--app", "a", "--user", "u", "--session", "s"]
    gone = CliRunner().invoke(main, ["cancel", "--url", f"http://127.0.0.1:{free_port()}", *args])
    assert gone.exit_code == 2 and "Is the server running?" in gone.output
    assert ".." not in gone.output


@pytest.mark.parametrize("command", ["runs", "cancel"])
@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:8000", "ftp://h", "http://", "http://h:x"])
def test_a_url_that_is_no_server_address_is_a_usage_error(command: str, url: str) -> None:
    args = [command, "--url", url, "--app", "a", "--user", "u", "--session", "s"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--url': {url!r} is not a server address: give one such as " in (
        result.output
    )
    assert "Is the server running" not in result.output


@pytest.fixture(scope="module")
def our_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("ours") / "server.log"
    with ServerProcess(TEST_AGENTS, *MEMORY, "--no_chat", log_path=log) as server:
        yield server
    assert "Skipping missing token usage metadata" not in server.log()


@pytest.fixture
def our_url(our_server: ServerProcess) -> str:
    return our_server.url


def test_a_mistyped_app_is_said_not_answered_as_no_run(our_url: str) -> None:
    session = ["--url", our_url, "--user", "u", "--session", "s"]
    for command, code in (("runs", 2), ("cancel", 1)):
        result = CliRunner().invoke(main, [command, "--app", "slow_agnet", *session])
        assert result.exit_code == code, result.output
        assert f"warning: {our_url} serves no app 'slow_agnet' (it serves: " in (result.output)
        assert "slow_agent" in result.output


def test_a_served_app_gets_no_warning(our_url: str) -> None:
    result = CliRunner().invoke(
        main,
        ["cancel", "--url", our_url, "--app", "slow_agent", "--user", "u", "--session", "s"],
    )
    assert result.exit_code == 1 and "No active run" in result.output
    assert "warning" not in result.output


# ---- real servers ---------------------------------------------------------------------


def stopped_cleanly(server: ServerProcess, signum: int) -> None:
    code = server.stop(signum)
    log = server.log()
    assert code == 0, log
    assert "Application shutdown complete" in log
    assert "Traceback" not in log and "Aborted!" not in log, log


def test_the_chat_is_announced_the_root_leads_to_it_and_ctrl_c_exits_0(tmp_path: Path) -> None:
    server = ServerProcess(TEST_AGENTS, *MEMORY, log_path=tmp_path / "server.log").start()
    try:
        root = httpx.get(server.url + "/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/chat"
        assert httpx.get(server.url + "/", follow_redirects=True).url == f"{server.url}/chat"
        assert f"Chat page: {server.url}/chat\n" in server.log()
    finally:
        stopped_cleanly(server, signal.SIGINT)  # Ctrl-C on an idle server


def test_without_the_chat_the_root_is_adks_and_sigterm_exits_0(tmp_path: Path) -> None:
    server = ServerProcess(TEST_AGENTS, *MEMORY, "--no_chat", log_path=tmp_path / "server.log")
    server.start()
    try:
        assert httpx.get(server.url + "/", follow_redirects=False).status_code == 404
        assert httpx.get(server.url + "/chat").status_code == 404
        assert "Chat page" not in server.log()
    finally:
        stopped_cleanly(server, signal.SIGTERM)


def test_api_server_subprocess_run_then_cancel_from_cli(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    server = ServerProcess(
        TEST_AGENTS,
        *MEMORY,
        "--no_chat",
        log_path=tmp_path / "server.log",
        env={EVENTS_ENV: str(events)},
    )
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
        session = ["--url", url, "--app", "slow_agent", "--user", "u", "--session", sid]
        listed = CliRunner().invoke(main, ["runs", *session])
        assert listed.exit_code == 0 and json.loads(listed.output)["runs"][0]["route"] == "run"
        result = CliRunner().invoke(main, ["cancel", *session, "--reason", "from the cli"])
        assert result.exit_code == 0, result.output
        assert result.output.endswith("}\n")
        answer = json.loads(result.output)
        assert answer["status"] == "cancelled" and answer["reason"] == "from the cli"
        assert answer["runs"][0]["stopped_by"] == "abort"
        thread.join(5)
        assert "tool_cancelled" in events.read_text()
        again = CliRunner().invoke(main, ["cancel", *session])
        assert again.exit_code == 1 and again.output.endswith("}\n")
        assert httpx.get(url + session_path(sid) + "/runs").json()["runs"] == []
    finally:
        code = server.stop(signal.SIGINT)
    log = server.log()
    assert code == 0, log
    assert "Application shutdown complete" in log and "Traceback" not in log, log
