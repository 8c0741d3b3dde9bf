"""The backend's options: keyword arguments, or query parameters of the Redis URL.

Ours are removed from the URL before it reaches redis-py, which keeps its own
(``?health_check_interval=3``); keyword arguments win over the URL.
"""

from __future__ import annotations

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
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def positive(name: str, given: float | None, from_url: dict[str, str], default: float) -> float:
    raw: Any = given if given is not None else from_url.get(name, default)
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"RedisBackend option {name}={raw!r} is not a number") from exc
    if not value > 0:
        raise ValueError(f"RedisBackend option {name}={raw!r} must be greater than 0")
    return value


def prefix(given: str | None, from_url: dict[str, str]) -> str:
    value = given if given is not None else from_url.get("key_prefix", "adk-cancel")
    if not value:
        raise ValueError("RedisBackend option key_prefix must not be empty")
    return value
