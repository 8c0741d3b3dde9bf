"""Backend URLs: the Redis backend's options in a URL's query, checked before anything
starts, and the URL as logs and errors show it (without its password).

Ours are removed from the URL before it reaches redis-py, which keeps its own
(``?health_check_interval=3``); keyword arguments win over the URL. An option that is
neither ours nor redis-py's is an error here, not a ``TypeError`` from redis-py when the
server starts. Nothing here imports redis-py unless asked for its option names.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

OPTION_NAMES = (
    "announce_ttl_s",
    "key_prefix",
    "op_timeout_s",
    "ack_timeout_s",
    "reply_margin_s",
    "reconnect_interval_s",
)


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """The URL for redis-py, and our options found in its query."""
    base, _, query = url.partition("?")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in OPTION_NAMES:
            ours[name] = value
        else:
            theirs.append((name, value))
    if not ours:
        return url, ours
    # Cut the query by hand: urlunsplit would turn unix:///path into unix:/path.
    return (f"{base}?{urlencode(theirs)}" if theirs else base), ours


def redact(url: str) -> str:
    """The URL as logs and errors show it: without its password."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an unparsable port: show nothing after the scheme's user part
        return url.split("@", 1)[-1] if "@" in url else url
    if password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@functools.cache
def redis_py_options() -> frozenset[str]:
    """The query parameters redis-py's ``from_url`` takes: those it parses, and the keyword
    arguments of its connection classes (it passes any other name on to them)."""
    from redis import connection

    names = set(getattr(connection, "URL_QUERY_ARGUMENT_PARSERS", {}))
    for cls_name in (
        "AbstractConnection",
        "Connection",
        "SSLConnection",
        "UnixDomainSocketConnection",
    ):
        cls = getattr(connection, cls_name, None)
        if cls is not None:
            names |= {
                p.name
                for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
            }
    names.discard("self")
    return frozenset(names)


def check_options(url: str) -> None:
    """Raise ``ValueError`` naming the option, its value and the fix for any option in a
    Redis URL's query that adk-cancel or redis-py would refuse later."""
    redis_url, ours = split_options(url)
    for name in OPTION_NAMES:
        if name == "key_prefix":
            prefix(None, ours)
        elif name in ours:
            positive(name, None, ours, 1.0)
    known = redis_py_options()
    for name, _ in parse_qsl(redis_url.partition("?")[2], keep_blank_values=True):
        if name in known:
            continue
        close = difflib.get_close_matches(name, [*OPTION_NAMES, *sorted(known)], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(
            f"unknown option {name!r} in the cancel backend URL {redact(url)}{hint}: "
            f"adk-cancel's are {', '.join(OPTION_NAMES)}; the rest go to redis-py, which "
            "takes e.g. socket_timeout, health_check_interval, max_connections"
        )


def positive(name: str, given: float | None, from_url: dict[str, str], default: float) -> float:
    raw: Any = given if given is not None else from_url.get(name, default)
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(
            f"RedisBackend option {name}={raw!r} is not a number: give seconds, e.g. {name}=5"
        ) from exc
    if not value > 0:
        raise ValueError(
            f"RedisBackend option {name}={raw!r} must be greater than 0: give seconds, "
            f"e.g. {name}=5"
        )
    return value


def prefix(given: str | None, from_url: dict[str, str]) -> str:
    value = given if given is not None else from_url.get("key_prefix", "adk-cancel")
    if not value:
        raise ValueError("RedisBackend option key_prefix must not be empty")
    return value
