"""Which google-adk is running, and which versions adk-cancel is tested on."""

from __future__ import annotations

import functools
import importlib.metadata

OLDEST_TESTED = "2.13.0"
"""The lowest google-adk ``pyproject.toml`` allows; CI runs the whole suite on it."""

NEWEST_TESTED = "2.15.0"
"""The newest google-adk released when the range was last raised; CI runs the whole suite on
the newest release the range allows (``constraints/newest.txt``)."""

BELOW = "2.16"
"""``pyproject.toml``'s upper bound: the next minor release is untested until the range is
raised."""


@functools.cache
def adk_version() -> str:
    """The installed google-adk's version ("unknown" if its metadata is missing)."""
    try:
        return importlib.metadata.version("google-adk")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _release(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(part):  # 2.16.0rc1: the pre-release belongs to 2.16.0
            break
    return tuple(parts)


def outside_tested_range(version: str | None = None) -> str | None:
    """A one-line warning when ``version`` (default: the installed one) is outside the
    tested range, else None."""
    version = version or adk_version()
    release = _release(version)
    if not release:
        return None
    if release < _release(OLDEST_TESTED):
        return (
            f"google-adk {version} is older than the oldest adk-cancel is tested on "
            f"({OLDEST_TESTED}): upgrade with pip install 'google-adk>={OLDEST_TESTED},<{BELOW}'"
        )
    if release >= _release(BELOW):
        return (
            f"google-adk {version} is newer than adk-cancel is tested on (up to "
            f"{NEWEST_TESTED}, below {BELOW}); each ADK internal adk-cancel needs is checked "
            "below, or pin pip install 'google-adk<" + BELOW + "'"
        )
    return None
