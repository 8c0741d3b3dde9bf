"""How deep a request body nests, checked before anything parses it.

Why: a body of a few kilobytes can nest thousands of arrays deep. Whatever reads it
recursively (``json.loads``, pydantic's errors, FastAPI's ``jsonable_encoder`` in its 422
handler, ``repr``) then hits the interpreter's recursion limit: a ``RecursionError``, a 500
with a traceback and a dropped connection. Where that happens moves with the interpreter
(Python 3.12 moved C recursion off the recursion limit, so from 3.12 ``json.loads`` parses
3,000 levels that 3.11 refused, and FastAPI's encoder fails on them instead). A body nested
deeper than :data:`MAX_DEPTH` is answered 422 here, before any of them sees it.

The scan itself does not recurse and stays in C for the bulk of the bytes: a body with
fewer brackets than the limit cannot nest past it (two ``bytes.count``); otherwise strings
are cut out (a ``[`` inside a string nests nothing) and the brackets left are summed.
"""

from __future__ import annotations

from array import array
from itertools import accumulate
from typing import Any

MAX_DEPTH = 128
"""The deepest nesting of arrays and objects a request body adk-cancel reads may have. ADK's
own bodies nest a dozen levels; a tool result sent back in a message, a few more. Far below
where any of the recursive readers above fails on any interpreter (FastAPI's encoder needs a
frame or two a level, under the default limit of 1,000)."""

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
"""Opening brackets to +1, closing ones to -1 (as signed bytes)."""


def depth_over(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``body``, read as JSON, nests arrays and objects deeper than ``limit``.

    Not a validator: a body that is not JSON may pass (its parser rejects it), and one whose
    strings never end counts only the brackets before them.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    # The brackets outside strings, each a step up or down; the deepest running sum is the
    # nesting. All loops run in C (the sum makes an int per bracket: ms per 100,000).
    brackets = _outside_strings(body).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    return max(accumulate(array("b", brackets.translate(_STEPS)))) > limit


def _outside_strings(body: bytes) -> bytes:
    """The body without its strings. Escapes go first (``\\\\`` before ``\\"``, so that an
    escaped backslash before a closing quote is not read as an escaped quote); then every
    other piece between quotes is a string. (Splitting is three times faster than a regular
    expression matching the strings: a body of many short strings is a match per string.)"""
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.split(b'"')[::2])


def too_deep_answer(body: bytes, limit: int = MAX_DEPTH) -> dict[str, Any] | None:
    """The 422 answer (FastAPI's shape: ``detail``, each with ``loc``, ``msg``, ``type``) to
    a body nested deeper than ``limit``; None for any other body."""
    if not depth_over(body, limit):
        return None
    return {
        "detail": [
            {
                "loc": ["body"],
                "msg": f"The JSON body is nested too deep: arrays and objects may nest at most "
                f"{limit} levels. Send a flatter document.",
                "type": "json_too_deep",
                "ctx": {"max_depth": limit},
            }
        ]
    }
