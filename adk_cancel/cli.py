"""``adk-cancel``: ADK's ``api_server`` and ``web`` with cancellation, plus a cancel client."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import click
import httpx

from ._options import DEFAULT_GRACE_S, DEFAULT_SHUTDOWN_GRACE_S, CancelOptions


@click.group(context_settings={"max_content_width": 120})
@click.version_option(package_name="adk-cancel")
def main() -> None:
    """Serve ADK agents that a POST .../sessions/{id}:cancel can stop."""


_CANCEL_OPTIONS = [
    click.Option(
        ["--cancel_backend"],
        default="memory://",
        show_default=True,
        help="Where runs are registered: memory:// (one process) or redis://host:port/db "
        "(cancel across workers and replicas).",
    ),
    click.Option(
        ["--cancel_grace_s"],
        type=click.FloatRange(min=0),
        default=DEFAULT_GRACE_S,
        show_default=True,
        help="Seconds a cooperative abort may take before the run's task is cancelled.",
    ),
    click.Option(
        ["--shutdown_grace_s"],
        type=click.FloatRange(min=0),
        default=DEFAULT_SHUTDOWN_GRACE_S,
        show_default=True,
        help="On SIGINT/SIGTERM, seconds active runs may go on before they are cancelled.",
    ),
    click.Option(
        ["--chat/--no_chat"],
        default=True,
        show_default=True,
        help="Serve the chat page with a Stop button at /chat.",
    ),
]


def _wrap_adk_command(name: str, adk_command: click.Command) -> click.Command:
    """ADK's own click command (every flag of it), building its app through ours."""

    def callback(**kwargs: Any) -> Any:
        settings = CancelOptions(
            cancel_backend=kwargs.pop("cancel_backend"),
            cancel_grace_s=kwargs.pop("cancel_grace_s"),
            shutdown_grace_s=kwargs.pop("shutdown_grace_s"),
            chat=kwargs.pop("chat"),
        )
        assert adk_command.callback is not None
        with _adk_builds_our_app(settings):
            return adk_command.callback(**kwargs)

    return click.Command(
        name,
        params=[*adk_command.params, *_CANCEL_OPTIONS],
        callback=callback,
        help=f"Like `adk {name}`, with the :cancel route installed.\n\n{adk_command.help or ''}",
        context_settings={"max_content_width": 120},
    )


@contextlib.contextmanager
def _adk_builds_our_app(settings: CancelOptions) -> Iterator[None]:
    """While ADK's own command runs, its ``get_fast_api_app`` builds our app; undone after."""
    from google.adk.cli import fast_api

    from ._install import build_app

    adk_factory = fast_api.get_fast_api_app

    def ours(**adk_kwargs: Any) -> Any:
        return build_app(adk_factory, settings, adk_kwargs)

    fast_api.get_fast_api_app = ours
    try:
        yield
    finally:
        fast_api.get_fast_api_app = adk_factory


def _register_adk_commands() -> None:
    from google.adk.cli import cli_tools_click

    main.add_command(_wrap_adk_command("api_server", cli_tools_click.cli_api_server))
    main.add_command(_wrap_adk_command("web", cli_tools_click.cli_web))


def _session_url(url: str, app: str, user: str, session: str) -> str:
    return f"{url.rstrip('/')}/apps/{app}/users/{user}/sessions/{session}"


_client_options = [
    click.option("--url", default="http://127.0.0.1:8000", show_default=True),
    click.option("--app", "app_name", required=True, help="App (agent directory) name."),
    click.option("--user", "user_id", required=True),
    click.option("--session", "session_id", required=True),
]


def _with_client_options(func: Any) -> Any:
    for option in reversed(_client_options):
        func = option(func)
    return func


def _print_answer(response: httpx.Response) -> None:
    try:
        click.echo(json.dumps(response.json(), indent=2))
    except ValueError:
        click.echo(response.text)


@main.command("cancel")
@_with_client_options
@click.option("--invocation", "invocation_id", default=None, help="Cancel only this invocation.")
@click.option("--reason", default=None, help="Why; shown to the run's client.")
@click.option("--wait/--no_wait", default=True, show_default=True)
@click.option("--timeout_s", type=click.FloatRange(min=0, min_open=True), default=None)
def cancel_command(
    url: str,
    app_name: str,
    user_id: str,
    session_id: str,
    invocation_id: str | None,
    reason: str | None,
    wait: bool,
    timeout_s: float | None,
) -> None:
    """Stop the runs in flight for a session. Exit 0 when cancelled, 1 when none was
    running, 2 on any other error."""
    body: dict[str, Any] = {"wait": wait}
    for name, value in (
        ("invocation_id", invocation_id),
        ("reason", reason),
        ("timeout_s", timeout_s),
    ):
        if value is not None:
            body[name] = value
    target = _session_url(url, app_name, user_id, session_id) + ":cancel"
    try:
        response = httpx.post(target, json=body, timeout=(timeout_s or 30) + 5)
    except httpx.HTTPError as exc:
        click.echo(f"Could not reach {url}: {exc}. Is the server running?", err=True)
        sys.exit(2)
    _print_answer(response)
    sys.exit(0 if response.status_code in (200, 202) else 1 if response.status_code == 404 else 2)


@main.command("runs")
@_with_client_options
def runs_command(url: str, app_name: str, user_id: str, session_id: str) -> None:
    """List a session's runs in flight."""
    try:
        response = httpx.get(_session_url(url, app_name, user_id, session_id) + "/runs", timeout=10)
    except httpx.HTTPError as exc:
        click.echo(f"Could not reach {url}: {exc}. Is the server running?", err=True)
        sys.exit(2)
    _print_answer(response)
    sys.exit(0 if response.status_code == 200 else 2)


def _register_model_commands() -> None:
    try:
        from .mlx.cli import models
    except ImportError:
        return  # the [mlx] extra is not installed
    main.add_command(models)


_register_adk_commands()
_register_model_commands()


if __name__ == "__main__":
    main()
