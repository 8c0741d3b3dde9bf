"""The CLI flags of :class:`CancelOptions`: one ``--name`` per field, and back.

Each field becomes a flag named after it, with the field's ``metadata["help"]`` as its help
and a click type from its annotation (``bool``: ``--x/--no_x``; ``float`` seconds, named
``*_s``: a number >= 0; ``Literal[...]``: a choice; ``X | None``: optional), so a new option
is still one field in ``_options.py``. A type with no flag mapping fails at the first use of
``api_server``/``web`` (and in the tests), not silently.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, Field, fields
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from . import backends
from ._options import CancelOptions

CLI_DEFAULTS: dict[str, Any] = {"chat": True}
"""Where the CLI's default differs from Python's: a person who starts a server wants the chat
page; an app built in Python gets only the routes it asks for."""


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    _ParamType = click.ParamType[Any, Any]  # generic only in newer click: not at run time
else:
    _ParamType = click.ParamType

T = TypeVar("T", bound="DataclassInstance")


class BackendUrl(_ParamType):
    """A ``--cancel_backend`` URL this install can use, checked while the flags are parsed:
    a wrong scheme or a missing extra is a usage error before anything starts."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            backends.check_backend_url(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return value


class Seconds(click.FloatRange):
    """A number of seconds >= 0 (``inf``: no limit; ``nan`` is refused)."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(min=0)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


_PARAM_TYPES: dict[str, _ParamType] = {
    # `str | CancelBackend`: a backend object can only come from Python; the CLI takes a URL.
    "cancel_backend": BackendUrl(),
}


def _hints(options_type: type[Any]) -> dict[str, Any]:
    # The annotations are strings (`from __future__ import annotations`), and _options.py
    # imports CancelBackend only for type checking: supply it.
    return typing.get_type_hints(options_type, localns={"CancelBackend": backends.CancelBackend})


def _click_type(name: str, hint: Any) -> _ParamType:
    """The click type of a field's flag (``X | None``: X's; the default says None)."""
    if name in _PARAM_TYPES:
        return _PARAM_TYPES[name]
    members: tuple[Any, ...] = (hint,)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
    rest = [m for m in members if m is not type(None)]
    if len(rest) == 1:
        (kind,) = rest
        if typing.get_origin(kind) is Literal:
            return click.Choice([str(v) for v in typing.get_args(kind)])
        if kind is bool:
            return click.BOOL
        if kind is float:
            return Seconds() if name.endswith("_s") else click.FLOAT
        if kind is int:
            return click.INT
        if kind is str:
            return click.STRING
    raise TypeError(
        f"option {name!r}: {hint!r} has no CLI flag type; map it in "
        "adk_cancel._cli_options (a plain type, a Literal, or an entry in _PARAM_TYPES)"
    )


def _option(field: Field[Any], hint: Any) -> click.Option:
    name = field.name
    kind = _click_type(name, hint)
    help_text = field.metadata.get("help")
    if not help_text:
        raise TypeError(f"option {name!r} has no metadata['help'] for its CLI flag")
    default = field.default if field.default_factory is MISSING else field.default_factory()
    default = CLI_DEFAULTS.get(name, default)
    if default is MISSING:
        raise TypeError(f"option {name!r} has no default; the CLI flag needs one")
    if kind is click.BOOL:
        return click.Option(
            [name, f"--{name}/--no_{name}"], default=default, show_default=True, help=help_text
        )
    return click.Option(
        [name, f"--{name}"],
        type=kind,
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def option_params(options_type: type[Any] = CancelOptions) -> list[click.Option]:
    """One click option per field of ``options_type`` (a dataclass), in field order."""
    hints = _hints(options_type)
    return [_option(field, hints[field.name]) for field in fields(options_type)]


def pop_options(values: dict[str, Any], options_type: type[T]) -> T:
    """The options in a command's parsed values, taken out of them (the rest are ADK's)."""
    # A field missing from ``values`` (a command built before it existed) keeps its default.
    ours = {f.name: values.pop(f.name) for f in fields(options_type) if f.name in values}
    try:
        return options_type(**ours)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
