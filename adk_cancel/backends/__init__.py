"""Backends behind the run registry, chosen by URL scheme and imported lazily."""

from __future__ import annotations

from urllib.parse import urlsplit

from ._base import BackendUnavailable, CancelBackend, LocalNode
from .memory import MemoryBackend

SUPPORTED_SCHEMES = ("memory", "redis", "rediss", "unix")

__all__ = [
    "SUPPORTED_SCHEMES",
    "BackendUnavailable",
    "CancelBackend",
    "LocalNode",
    "MemoryBackend",
    "backend_from_url",
]


def backend_from_url(url: str) -> CancelBackend:
    """Build the backend a URL names: ``memory://`` or ``redis://host:port/db``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryBackend()
    if scheme in ("redis", "rediss", "unix"):
        try:
            from .redis import RedisBackend
        except ImportError as exc:
            raise ImportError(
                f"The cancel backend {url!r} needs redis-py: pip install 'adk-cancel[redis]'"
            ) from exc
        return RedisBackend(url)
    raise ValueError(
        f"Unknown cancel backend URL {url!r}: use one of "
        + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES[:2])
        + " (for example redis://127.0.0.1:6379/0), or pass backend= for your own."
    )
