"""``adk-cancel``: ADK's ``api_server`` and ``web`` with cancellation, plus a cancel client.

Importing this module imports neither ADK nor the server side of adk-cancel: ``adk-cancel
--help``, ``cancel`` and ``runs`` answer at once. ADK's own click commands (about 2 s to
import) are loaded only when ``api_server`` or ``web`` is used.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    import httpx

    from ._options import CancelOptions

CONTEXT_SETTINGS = {"max_content_width": 120}


class _LazyGroup(click.Group):
    """A group whose heavy commands are imported only when one of them is used.

    ``lazy`` maps a command name to (its loader, its one-line help): the group's own
    ``--help`` lists them from that line, without loading them.
    """

    def __init__(
        self,
        *args: Any,
        lazy: Mapping[str, tuple[Callable[[], click.Command], str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            load, _ = self.lazy[cmd_name]
            self.add_command(load(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: list[tuple[str, str]] = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(name) for name in names), default=0)
        for name in names:
            if name in self.lazy and name not in self.commands:
                rows.append((name, self.lazy[name][1]))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _adk_command(name: str) -> Callable[[], click.Command]:
    def load() -> click.Command:
        from ._serve_command import adk_command
        from .adk.commands import MissingCommand

        try:
            return adk_command(name, _SHORT_HELP[name])
        except MissingCommand as exc:
            raise click.ClickException(str(exc)) from exc

    return load


def _load_models() -> click.Command:
    try:
        from .mlx.cli import models
    except ImportError as exc:
        raise click.ClickException(
            f"`adk-cancel models` needs the mlx extra ({exc}): pip install 'adk-cancel[mlx]'"
        ) from exc
    return models


_SHORT_HELP = {
    "api_server": "ADK's api_server (all its flags) with :cancel, /runs and /chat.",
    "web": "ADK's web (dev UI; all its flags) with :cancel, /runs and /chat.",
    "models": "Local MLX models for mlx/... agents, prepared once, offline.",
}


@click.group(
    cls=_LazyGroup,
    lazy={
        "api_server": (_adk_command("api_server"), _SHORT_HELP["api_server"]),
        "web": (_adk_command("web"), _SHORT_HELP["web"]),
        "models": (_load_models, _SHORT_HELP["models"]),
    },
    context_settings=CONTEXT_SETTINGS,
)
@click.version_option(package_name="adk-cancel")
def main() -> None:
    """Serve ADK agents that a POST .../sessions/{id}:cancel can stop."""


def cancel_option_params(options_type: type[Any] | None = None) -> list[click.Option]:
    """The cancel flags of ``api_server`` and ``web``, for a click command of your own.

    One click option per :class:`adk_cancel.CancelOptions` field (or per field of
    ``options_type``, a dataclass of the same kind): ``--name``, the field's
    ``metadata["help"]``, a type from its annotation. :func:`pop_cancel_options` turns the
    parsed values back into the options.
    """
    from ._cli_options import option_params
    from ._options import CancelOptions

    return option_params(options_type or CancelOptions)


def pop_cancel_options(values: dict[str, Any]) -> CancelOptions:
    """The :class:`adk_cancel.CancelOptions` in a command's parsed values, taken out of them
    (what is left is for ADK); a usage error if they do not make valid options."""
    from ._cli_options import pop_options
    from ._options import CancelOptions

    return pop_options(values, CancelOptions)


def _session_path(app: str, user: str, session: str) -> str:
    return f"/apps/{app}/users/{user}/sessions/{session}"


if TYPE_CHECKING:
    _ParamType = click.ParamType[Any, Any]  # generic only in newer click: not at run time
else:
    _ParamType = click.ParamType

_F = TypeVar("_F", bound=Callable[..., Any])


class ServerUrl(_ParamType):
    """``--url``: an http:// or https:// address with a host, checked before any request."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(str(value))
            parts.port  # noqa: B018 (parsing the port is the check)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(
                f"{value!r} is not a server address: give one such as http://127.0.0.1:8000",
                param,
                ctx,
            )
        return str(value)


def _url_option() -> Callable[[_F], _F]:
    return click.option(
        "--url",
        type=ServerUrl(),
        default="http://127.0.0.1:8000",
        show_default=True,
        help="The server's address.",
    )


_client_options = [
    _url_option(),
    click.option("--app", "app_name", required=True, help="App (agent directory) name."),
    click.option("--user", "user_id", required=True, help="User id of the session."),
    click.option("--session", "session_id", required=True, help="Session id."),
]


def _with_client_options(func: Any) -> Any:
    for option in reversed(_client_options):
        func = option(func)
    return func


_cancel_options = [
    click.option(
        "--invocation", "invocation_id", default=None, help="Cancel only this invocation."
    ),
    click.option("--reason", default=None, help="Why; shown to the run's client."),
    click.option(
        "--wait/--no_wait",
        default=True,
        show_default=True,
        help="Answer once the runs have stopped (--no_wait: once the cancel is signalled).",
    ),
    click.option(
        "--timeout_s",
        type=click.FloatRange(min=0, min_open=True, max=300),
        default=None,
        help="With --wait, answer after this long even if a run has not stopped.",
    ),
]


def _with_cancel_options(func: Any) -> Any:
    for option in reversed(_cancel_options):
        func = option(func)
    return func


def _cancel(url: str, path: str, body: dict[str, Any], timeout_s: float | None) -> None:
    """POST a cancel, print the answer and its warning; exit 0 (cancelled), 1 (nothing to
    cancel) or 2 (any other error)."""
    body = {k: v for k, v in body.items() if v is not None}
    response = _call("POST", url, path, json=body, timeout=(timeout_s or 30) + 5)
    if response.status_code == 404:
        _say_if_no_such_app(url, path)
    try:
        warning = response.json().get("warning")
    except (ValueError, AttributeError):
        warning = None
    if warning:
        # What a narrow cancel left running: said on stderr, where a script's reader looks.
        click.echo(f"warning: {warning}", err=True)
    sys.exit(0 if response.status_code in (200, 202) else 1 if response.status_code == 404 else 2)


def _call(method: str, url: str, path: str, **kwargs: Any) -> httpx.Response:
    """``method url+path``, printing the answer (JSON indented); exit 2 if unreachable."""
    import httpx  # imported here: `adk-cancel --help` needs none of it

    try:
        response = httpx.request(method, url.rstrip("/") + path, **kwargs)
    except httpx.HTTPError as exc:
        why = str(exc).rstrip(".") or type(exc).__name__
        click.echo(f"Could not reach {url} ({why}). Is the server running?", err=True)
        sys.exit(2)
    try:
        click.echo(json.dumps(response.json(), indent=2))
    except ValueError:
        click.echo(response.text.rstrip("\n"))
    return response


@main.command("cancel")
@_with_client_options
@_with_cancel_options
@click.option("--run", "run_id", default=None, help="Cancel only this run (as `runs` lists it).")
@click.option(
    "--action",
    type=click.Choice(["interrupt", "rollback"]),
    default="interrupt",
    show_default=True,
    help="interrupt: the session keeps the stopped turn (sealed, with the text streamed so "
    "far); rollback: the session is rewound to before the turn's message.",
)
def cancel_command(
    url: str,
    app_name: str,
    user_id: str,
    session_id: str,
    invocation_id: str | None,
    run_id: str | None,
    reason: str | None,
    wait: bool,
    timeout_s: float | None,
    action: str,
) -> None:
    """Stop the runs in flight for a session. Exit 0 when cancelled, 1 when none was
    running, 2 on any other error. A cancel naming --invocation prints a warning (stderr)
    when other runs of the session stay active."""
    body = {
        "wait": wait,
        "action": action,
        "invocation_id": invocation_id,
        "run_id": run_id,
        "reason": reason,
        "timeout_s": timeout_s,
    }
    _cancel(url, _session_path(app_name, user_id, session_id) + ":cancel", body, timeout_s)


@main.command("cancel_user")
@_url_option()
@click.option("--app", "app_name", required=True, help="App (agent directory) name.")
@click.option("--user", "user_id", required=True, help="User id whose runs to stop.")
@_with_cancel_options
def cancel_user_command(
    url: str,
    app_name: str,
    user_id: str,
    invocation_id: str | None,
    reason: str | None,
    wait: bool,
    timeout_s: float | None,
) -> None:
    """Stop every run in flight of one user in one app, on every worker (a logged-out user).
    Exit 0 when cancelled, 1 when none was running, 2 on any other error."""
    body = {"wait": wait, "invocation_id": invocation_id, "reason": reason, "timeout_s": timeout_s}
    _cancel(url, f"/apps/{app_name}/users/{user_id}:cancel", body, timeout_s)


@main.command("runs")
@_with_client_options
@click.option(
    "--status",
    default=None,
    help="Which runs: active (default), all (with recent ended runs), or statuses such as "
    "cancelled,timed_out (comma-separated).",
)
def runs_command(
    url: str, app_name: str, user_id: str, session_id: str, status: str | None
) -> None:
    """List a session's runs in flight (and with --status, its recent ones)."""
    params = {"status": status} if status is not None else None
    path = _session_path(app_name, user_id, session_id) + "/runs"
    response = _call("GET", url, path, params=params, timeout=10)
    if response.status_code == 200 and _say_if_no_such_app(url, path):
        sys.exit(2)
    sys.exit(0 if response.status_code == 200 else 2)


def _say_if_no_such_app(url: str, path: str) -> bool:
    """Whether the server serves no app of ``path``'s name, said on stderr with the names it
    serves: an empty list or a 404 for a mistyped --app would otherwise look like "no run"."""
    import httpx

    app_name = path.split("/")[2]
    try:
        answer = httpx.get(url.rstrip("/") + "/list-apps", timeout=10)
        apps = answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return False  # not ADK's server, or it did not answer: nothing to say
    if not isinstance(apps, list) or app_name in apps:
        return False
    served = ", ".join(str(a) for a in apps) or "none"
    click.echo(f"warning: {url} serves no app {app_name!r} (it serves: {served})", err=True)
    return True


if __name__ == "__main__":
    main()
