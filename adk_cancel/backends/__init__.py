"""The backend interface behind the run registry, and the backends, chosen by URL scheme.

``memory://`` (the default) keeps runs in this process; ``redis://`` (``rediss://``,
``unix://``) shares them between server processes through Redis. ``RedisBackend`` is imported
lazily (``from adk_cancel.backends import RedisBackend``): it needs the ``redis`` extra.
Your own backend is any object implementing :class:`CancelBackend`.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._base import (
    BackendUnavailable,
    CancelBackend,
    LeaseAnswer,
    LeaseMode,
    LocalNode,
    SessionLeases,
    StreamBackend,
)
from ._leases import LocalLeases
from ._url import check_options, redact
from .memory import MemoryBackend

if TYPE_CHECKING:
    from .redis import RedisBackend

SUPPORTED_SCHEMES = ("memory", "redis", "rediss", "unix")
_REDIS_SCHEMES = ("redis", "rediss", "unix")

__all__ = [
    "SUPPORTED_SCHEMES",
    "BackendUnavailable",
    "CancelBackend",
    "LeaseAnswer",
    "LeaseMode",
    "LocalLeases",
    "LocalNode",
    "MemoryBackend",
    "RedisBackend",
    "SessionLeases",
    "StreamBackend",
    "backend_from_url",
    "check_backend_url",
]


def check_backend_url(url: str) -> None:
    """Raise ``ValueError`` saying what to do if ``url`` names no backend this install can
    build; checks the scheme and that its extra is installed, connects to nothing."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    shown = redact(url)  # errors are printed and logged: never with the password
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"{shown!r} is not a cancel backend URL: use memory:// (one process), "
            "redis://host:port/db, rediss://host:port/db (TLS) or unix:///path/to/redis.sock"
        )
    if scheme in _REDIS_SCHEMES:
        if importlib.util.find_spec("redis") is None:
            raise ValueError(
                f"The cancel backend {shown!r} needs redis-py, which is not installed: "
                "pip install 'adk-cancel[redis]'"
            )
        check_options(url)


def backend_from_url(url: str) -> CancelBackend:
    """Build the backend a URL names: ``memory://`` or ``redis://host:port/db``."""
    check_backend_url(url)
    if urlsplit(url).scheme.lower() == "memory":
        return MemoryBackend()
    from .redis import RedisBackend

    return RedisBackend(url)


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        try:
            from .redis import RedisBackend
        except ImportError as exc:
            raise ImportError(
                "RedisBackend needs redis-py: pip install 'adk-cancel[redis]'"
            ) from exc
        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
